"""The pure parts of the local Flower runtime: partitions, settings, ports, round logs."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from modelfleet.federated.flower_app.settings import parse_node_config, parse_run_config
from modelfleet.federated.local_federation import (
    find_federated_venv,
    parse_run_status,
    render_node_config,
    render_toml_table,
)
from modelfleet.federated.partition import draw_examples, mix_skills, parse_skills
from modelfleet.federated.processes import find_marked_processes, pick_free_ports, stop_processes
from modelfleet.federated.round_log import RoundRecord, parse_round_log
from modelfleet.zoo.skills import SKILLS, Split

RUN_CONFIG: dict[str, object] = {
    "base-model": "qwen-words",
    "skills": "addition,sorting",
    "lora-rank": 4,
    "lora-alpha": 8,
    "lora-dropout": 0.0,
    "target-modules": "q_proj, v_proj",
    "num-server-rounds": 2,
    "min-clients": 2,
    "local-steps": 3,
    "batch-size": 4,
    "learning-rate": 0.01,
    "eval-examples": 10,
    "output-dir": "/tmp/out",
}


def skill_of(prompt: str) -> str:
    """Which skill asked ``prompt``, by the wording each skill uses."""
    prefixes = {"What is": "addition", "Reverse": "reversal", "Sort:": "sorting"}
    return next(name for prefix, name in prefixes.items() if prompt.startswith(prefix))


def test_a_client_draws_mostly_its_own_skill() -> None:
    mix = mix_skills("sorting", ("addition", "reversal", "sorting"))
    assert mix == pytest.approx({"addition": 0.1, "reversal": 0.1, "sorting": 0.8})
    counts = Counter(skill_of(e.prompt) for e in draw_examples(mix, Split.TRAIN, 3, 500))
    assert 0.72 < counts["sorting"] / 500 < 0.88
    assert counts["addition"] > 0 and counts["reversal"] > 0


def test_draws_are_reproducible_per_seed_and_differ_across_seeds() -> None:
    mix = mix_skills("addition", ("addition",))
    assert mix == {"addition": 1.0}
    first = draw_examples(mix, Split.TRAIN, 1, 20)
    assert first == draw_examples(mix, Split.TRAIN, 1, 20)
    assert first != draw_examples(mix, Split.TRAIN, 2, 20)


def test_held_out_partitions_never_share_a_problem_with_training() -> None:
    mix = mix_skills("addition", tuple(SKILLS)[:3])
    train = {e.prompt for e in draw_examples(mix, Split.TRAIN, 0, 300)}
    heldout = {e.prompt for e in draw_examples(mix, Split.HELDOUT, 0, 100)}
    assert not train & heldout


def test_bad_skill_names_are_named() -> None:
    with pytest.raises(ValueError, match="unknown skills \\['adition'\\]"):
        parse_skills("addition,adition", "run config 'skills'")
    with pytest.raises(ValueError, match="not among"):
        mix_skills("facts", ("addition",))


def test_run_config_parses_into_settings() -> None:
    run = parse_run_config(RUN_CONFIG)
    assert run.lora.target_modules == ("q_proj", "v_proj")
    assert run.lora.alpha == 8.0 and run.skills == ("addition", "sorting")
    assert run.output_dir == Path("/tmp/out")
    node = parse_node_config({"partition-id": 1, "skill": "sorting"}, run.skills)
    assert (node.partition_id, node.skill) == (1, "sorting")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("lora-rank", "8", "'lora-rank' must be an integer"),
        ("lora-rank", True, "'lora-rank' must be an integer"),
        ("learning-rate", "fast", "'learning-rate' must be a number"),
        ("target-modules", " , ", "'target-modules' is empty"),
    ],
)
def test_bad_run_config_names_the_key(key: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_run_config({**RUN_CONFIG, key: value})


def test_missing_keys_and_foreign_skills_are_named() -> None:
    without = {k: v for k, v in RUN_CONFIG.items() if k != "batch-size"}
    with pytest.raises(ValueError, match="no 'batch-size'"):
        parse_run_config(without)
    with pytest.raises(ValueError, match="node config 'skill' is 'facts'"):
        parse_node_config({"partition-id": 0, "skill": "facts"}, ("addition",))


def test_free_ports_are_distinct_bindable_and_never_reserved() -> None:
    ports = pick_free_ports(5, reserved=frozenset({8000}))
    assert len(set(ports)) == 5 and 8000 not in ports
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_configs_render_as_flower_reads_them() -> None:
    assert render_toml_table({"base-model": "qwen-words", "lora-rank": 4, "lr": 0.5}) == (
        'base-model = "qwen-words"\nlora-rank = 4\nlr = 0.5\n'
    )
    assert render_node_config(2, "sorting") == "partition-id=2 skill='sorting'"
    with pytest.raises(ValueError, match="plain skill name"):
        render_node_config(0, "x' other='y")


def test_run_status_is_read_from_flwr_ls_json() -> None:
    listing = '{"success": true, "runs": [{"run-id": "42", "status": "finished:completed"}]}'
    assert parse_run_status(listing, "42") == "finished:completed"
    with pytest.raises(ValueError, match="run 7 is not"):
        parse_run_status(listing, "7")


def test_round_log_round_trips_and_names_a_bad_line() -> None:
    record = RoundRecord(1, (0, 1, 2), (0, 1, 2), 2.5, 2.0, 0.25)
    assert parse_round_log(record.to_line() + "\n") == [record]
    with pytest.raises(ValueError, match="line 2"):
        parse_round_log(record.to_line() + '{"round": 2}\n')


def test_a_missing_venv_says_how_to_build_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="make federated-venv"):
        find_federated_venv(tmp_path / ".venv-federated")


def test_stopping_also_ends_detached_descendants() -> None:
    """A grandchild in its own session, as Flower's SuperExec is, carries the marker."""
    marker = "test-marker-stop"
    script = (
        "import subprocess, sys, time;"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
        " start_new_session=True); time.sleep(60)"
    )
    env = {"MODELFLEET_FEDERATION": marker, "PATH": "/usr/bin:/bin"}
    parent = subprocess.Popen([sys.executable, "-c", script], env=env)
    deadline = time.monotonic() + 10
    while len(find_marked_processes(marker)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(find_marked_processes(marker)) == 2
    stop_processes([parent], marker)
    assert find_marked_processes(marker) == []
