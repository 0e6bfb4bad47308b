"""From a FedJob's spec to a run directory the local federation can start from.

Everything that can be wrong with a spec on this machine (a dataset that is not there, a
base model the zoo does not have, a rank larger than a layer, an output that cannot be
written) is found here, before any process starts, and named with the field to fix.
"""

from __future__ import annotations

import os
from pathlib import Path

from modelfleet.api.fedjob import FedJobSpec, ModelFamily
from modelfleet.artifacts.uri import ArtifactUri, parse_artifact_uri
from modelfleet.federated.datasets import SPLIT_FILES
from modelfleet.federated.job import (
    ClientSettings,
    CompressionSettings,
    JobSettings,
    Method,
    PrivacySettings,
)
from modelfleet.zoo.recipes import RECIPES, Architecture, linear_layers

ZOO_FAMILIES = {Architecture.LLAMA: ModelFamily.LLAMA, Architecture.QWEN2: ModelFamily.QWEN}
"""The ``spec.baseModel.family`` of each architecture the zoo builds."""


class JobInvalid(ValueError):
    """The spec cannot run on this backend; the message names the field."""


def job_settings(spec: FedJobSpec) -> JobSettings:
    """The run's settings from a valid spec (see :func:`check_local_job` first)."""
    dp = spec.privacy.differential_privacy
    compression = spec.compression
    return JobSettings(
        base_model=parse_artifact_uri(spec.base_model.uri, "spec.baseModel.uri").name,
        alpha=spec.adapter.alpha,
        dropout=spec.adapter.dropout,
        target_modules=tuple(spec.adapter.target_modules),
        clients=tuple(
            ClientSettings(name=c.name, rank=spec.client_rank(c), weight=c.weight)
            for c in spec.clients
        ),
        rounds=spec.rounds,
        local_steps=spec.local_steps,
        method=Method(spec.aggregation.method.value),
        min_clients=spec.aggregation.min_clients,
        client_fraction=spec.aggregation.client_fraction,
        round_timeout_seconds=float(spec.aggregation.round_timeout_seconds),
        secure=spec.privacy.secure_aggregation,
        privacy=PrivacySettings(
            clip_norm=dp.clip_norm,
            noise_multiplier=dp.noise_multiplier,
            target_epsilon=dp.target_epsilon,
            target_delta=dp.target_delta,
        )
        if dp.enabled
        else None,
        compression=CompressionSettings(compression.sparsity, compression.quantization.value)
        if compression.enabled
        else None,
    )


def local_path(uri: str, field: str) -> Path:
    """The directory a ``file://`` URI names; other schemes are for the kuberay backend."""
    parsed = parse_artifact_uri(uri, field)
    if parsed.scheme != "file":
        raise JobInvalid(
            f"{field}: the local backend reads and writes file:// directories, got {uri!r}; "
            "use file:///path or run the operator with --backend=kuberay"
        )
    return Path(parsed.path)


def client_datasets(spec: FedJobSpec) -> dict[str, Path]:
    """Each client's dataset directory, checked to hold both splits."""
    datasets = {}
    for index, client in enumerate(spec.clients):
        field = f"spec.clients[{index}].datasetUri ({client.name})"
        directory = local_path(client.dataset_uri, field)
        missing = [name for name in SPLIT_FILES.values() if not (directory / name).is_file()]
        if missing:
            raise JobInvalid(
                f"{field}: {directory} lacks {missing}; a client dataset directory holds "
                f"{' and '.join(SPLIT_FILES.values())} (python -m modelfleet.federated.datasets)"
            )
        datasets[client.name] = directory
    return datasets


def narrowest_widths(model: str, target_modules: tuple[str, ...]) -> dict[str, int]:
    """The smallest side of each target module's linear layers in zoo model ``model``."""
    layers = linear_layers(RECIPES[model])
    return {name: min(layers[name]) for name in target_modules if name in layers}


def check_base_model(spec: FedJobSpec) -> None:
    """The base model is a zoo model with every target module, each wider than any rank."""
    uri = parse_artifact_uri(spec.base_model.uri, "spec.baseModel.uri")
    if uri.scheme != "zoo" or uri.name not in RECIPES:
        raise JobInvalid(
            f"spec.baseModel.uri: the FedJob runtime fine-tunes zoo models, got "
            f"{spec.base_model.uri!r}; use one of {[f'zoo://{n}' for n in RECIPES]}"
        )
    family = ZOO_FAMILIES[RECIPES[uri.name].architecture]
    if spec.base_model.family not in (None, family):
        raise JobInvalid(
            f"spec.baseModel.family: zoo://{uri.name} is a {family} model, not "
            f"{spec.base_model.family}; set family: {family} or leave it unset"
        )
    narrowest = narrowest_widths(uri.name, tuple(spec.adapter.target_modules))
    absent = [m for m in spec.adapter.target_modules if m not in narrowest]
    if absent:
        raise JobInvalid(
            f"spec.adapter.targetModules: {uri.name} has no linear layers named {absent}"
        )
    smallest = min(narrowest.values())
    for index, client in enumerate(spec.clients):
        if spec.client_rank(client) > smallest:
            raise JobInvalid(
                f"spec.clients[{index}].rank ({client.name}) is {spec.client_rank(client)}, "
                f"larger than the narrowest adapted layer of {uri.name} ({smallest}); "
                f"lower it to at most {smallest}"
            )


def check_output(spec: FedJobSpec) -> Path:
    """The output directory, created if needed and checked writable."""
    directory = local_path(spec.output.uri, "spec.output.uri")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise JobInvalid(f"spec.output.uri: cannot create {directory}: {error}") from None
    if not os.access(directory, os.W_OK):
        raise JobInvalid(f"spec.output.uri: {directory} is not writable by the operator")
    return directory


def check_local_job(spec: FedJobSpec) -> tuple[Path, dict[str, Path]]:
    """The run directory and the clients' datasets, once every check has passed."""
    check_base_model(spec)
    datasets = client_datasets(spec)
    return check_output(spec), datasets


def claim_uri(uri: str, field: str) -> ArtifactUri:
    """A ``pvc://`` URI: on a cluster, pods reach data through PersistentVolumeClaims."""
    parsed = parse_artifact_uri(uri, field)
    if parsed.scheme != "pvc":
        raise JobInvalid(
            f"{field}: on a cluster the FedJob's pods mount PersistentVolumeClaims, got "
            f"{uri!r}; use pvc://<claim>/<path> (or run the operator with --backend=local "
            "for file:// directories)"
        )
    return parsed


def check_cluster_job(spec: FedJobSpec) -> tuple[ArtifactUri, dict[str, ArtifactUri]]:
    """The output's claim and each client's dataset claim, once every check has passed."""
    check_base_model(spec)
    datasets = {
        client.name: claim_uri(
            client.dataset_uri, f"spec.clients[{index}].datasetUri ({client.name})"
        )
        for index, client in enumerate(spec.clients)
    }
    return claim_uri(spec.output.uri, "spec.output.uri"), datasets
