"""The app's run config and node config, parsed and checked once, naming any bad key.

Flower hands both over as flat maps of TOML scalars; a typo or a wrong type there would
otherwise surface as a KeyError deep inside a round, on one SuperNode, minutes in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from modelfleet.federated.lora import LoraSettings
from modelfleet.federated.partition import parse_skills


def _lookup(config: Mapping[str, object], key: str, source: str) -> object:
    """``config[key]``, or an error saying where to set it."""
    if key not in config:
        raise ValueError(f"{source} has no {key!r}; set it in [tool.flwr.app.config] or override")
    return config[key]


def _wrong_type(source: str, key: str, kind: str, value: object) -> ValueError:
    return ValueError(f"{source} {key!r} must be {kind}, got {value!r}")


def _int(config: Mapping[str, object], key: str, source: str) -> int:
    value = _lookup(config, key, source)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong_type(source, key, "an integer", value)
    return value


def _float(config: Mapping[str, object], key: str, source: str) -> float:
    value = _lookup(config, key, source)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong_type(source, key, "a number", value)
    return float(value)


def _str(config: Mapping[str, object], key: str, source: str) -> str:
    value = _lookup(config, key, source)
    if not isinstance(value, str):
        raise _wrong_type(source, key, "a string", value)
    return value


@dataclass(frozen=True)
class RunSettings:
    """One federated run: base model, adapter, rounds and local training."""

    base_model: str
    skills: tuple[str, ...]
    lora: LoraSettings
    rounds: int
    min_clients: int
    local_steps: int
    batch_size: int
    learning_rate: float
    eval_examples: int
    output_dir: Path | None


def parse_run_config(config: Mapping[str, object]) -> RunSettings:
    """The run's settings from Flower's run config."""
    source = "run config"
    targets = tuple(
        name.strip() for name in _str(config, "target-modules", source).split(",") if name.strip()
    )
    if not targets:
        raise ValueError("run config 'target-modules' is empty; name modules such as q_proj")
    output = _str(config, "output-dir", source)
    return RunSettings(
        base_model=_str(config, "base-model", source),
        skills=parse_skills(_str(config, "skills", source), f"{source} 'skills'"),
        lora=LoraSettings(
            rank=_int(config, "lora-rank", source),
            alpha=_float(config, "lora-alpha", source),
            dropout=_float(config, "lora-dropout", source),
            target_modules=targets,
        ),
        rounds=_int(config, "num-server-rounds", source),
        min_clients=_int(config, "min-clients", source),
        local_steps=_int(config, "local-steps", source),
        batch_size=_int(config, "batch-size", source),
        learning_rate=_float(config, "learning-rate", source),
        eval_examples=_int(config, "eval-examples", source),
        output_dir=Path(output) if output else None,
    )


@dataclass(frozen=True)
class NodeSettings:
    """One SuperNode's share of the federation: its partition and the skill it mostly holds."""

    partition_id: int
    skill: str


def parse_node_config(config: Mapping[str, object], skills: tuple[str, ...]) -> NodeSettings:
    """The SuperNode's settings from its ``--node-config``, its skill one of ``skills``."""
    source = "node config"
    skill = _str(config, "skill", source)
    if skill not in skills:
        raise ValueError(f"node config 'skill' is {skill!r}; the run's skills are {list(skills)}")
    return NodeSettings(partition_id=_int(config, "partition-id", source), skill=skill)
