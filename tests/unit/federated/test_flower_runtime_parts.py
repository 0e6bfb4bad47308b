"""The pure parts of the local Flower runtime: partitions, job settings, ports, configs."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from modelfleet.federated.datasets import read_split, write_site_dataset
from modelfleet.federated.job import (
    ClientSettings,
    CompressionSettings,
    JobSettings,
    Method,
    PrivacySettings,
)
from modelfleet.federated.local_federation import (
    find_federated_venv,
    parse_run_status,
    read_sites,
    render_node_config,
    write_sites,
)
from modelfleet.federated.partition import draw_examples, mix_skills, parse_skills
from modelfleet.federated.processes import find_marked_processes, pick_free_ports, stop_processes
from modelfleet.zoo.skills import SKILLS, Split

JOB = JobSettings(
    base_model="qwen-words",
    alpha=16.0,
    dropout=0.0,
    target_modules=("q_proj", "v_proj"),
    clients=(ClientSettings("a", 4, 1.0), ClientSettings("b", 16, 2.0)),
    rounds=3,
    local_steps=5,
    method=Method.FLORA,
    min_clients=2,
    client_fraction=1.0,
    privacy=PrivacySettings(1.0, 0.8, 8.0, 1e-5),
    compression=CompressionSettings(0.9, "Int8"),
)


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


def test_job_settings_round_trip_through_json() -> None:
    assert JobSettings.from_json(JOB.to_json()) == JOB
    plain = JobSettings(**{**JOB.__dict__, "privacy": None, "compression": None})
    assert JobSettings.from_json(plain.to_json()) == plain
    assert plain.digest() != JOB.digest() and not plain.uploads_dense and JOB.uploads_dense


def test_a_node_naming_an_unknown_client_is_refused() -> None:
    assert JOB.client("b").rank == 16
    with pytest.raises(ValueError, match="node config names client 'c'"):
        JOB.client("c")


def test_a_site_dataset_round_trips_and_a_bad_line_is_named(tmp_path: Path) -> None:
    site = write_site_dataset(tmp_path / "site", "sorting", ("addition", "sorting"), 0, 30, 5)
    train = read_split(site, Split.TRAIN)
    assert len(train) == 30 and len(read_split(site, Split.HELDOUT)) == 5
    assert sum(skill_of(e.prompt) == "sorting" for e in train) > 15
    (site / "heldout.jsonl").write_text('{"prompt": "p", "answer": "a"}\n{"prompt": 1}\n')
    with pytest.raises(ValueError, match=r"heldout\.jsonl line 2"):
        read_split(site, Split.HELDOUT)
    with pytest.raises(FileNotFoundError, match=r"train\.jsonl"):
        read_split(tmp_path, Split.TRAIN)


def test_free_ports_are_distinct_bindable_and_never_reserved() -> None:
    ports = pick_free_ports(5, reserved=frozenset({8000}))
    assert len(set(ports)) == 5 and 8000 not in ports
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_each_node_is_told_only_its_own_dataset(tmp_path: Path) -> None:
    write_sites(tmp_path, {"a": Path("/data/a"), "b": Path("/data/b b")})
    assert read_sites(tmp_path) == {"a": Path("/data/a"), "b": Path("/data/b b")}
    assert render_node_config("b", Path("/data/b b")) == 'client="b" dataset="/data/b b"'


def test_run_status_is_read_from_flwr_ls_json() -> None:
    listing = '{"success": true, "runs": [{"run-id": "42", "status": "finished:completed"}]}'
    assert parse_run_status(listing, "42") == "finished:completed"
    with pytest.raises(ValueError, match="run 7 is not"):
        parse_run_status(listing, "7")
    unreachable = '{"success": false, "error-message": "the SuperLink is unavailable"}'
    with pytest.raises(RuntimeError, match="SuperLink is unavailable"):
        parse_run_status(unreachable, "42")


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
