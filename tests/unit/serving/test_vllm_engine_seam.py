"""The seam that picks the vLLM engine, checked where vLLM and GPUs are absent.

The engine itself is tested in ``tests/gpu``; here: which URIs a vLLM model accepts,
that the torch path is unchanged, and that a replica asked for vLLM where it cannot run
fails with an error naming the spec field and the fix.
"""

from __future__ import annotations

import sys

import pytest
import torch

from modelfleet.api.modelpool import ModelPoolSpec, ServedModel
from modelfleet.serving.app import build
from modelfleet.serving.catalog import resolve_model, resolve_served_model
from modelfleet.serving.frontend import ServingOptions, pool_settings
from modelfleet.serving.model import ModelConfig
from modelfleet.serving.replica import EngineSpec, build_engine
from modelfleet.serving.torch_engine import EngineConfig, TorchEngine
from modelfleet.serving.vllm_engine import VllmModel, VllmUnavailableError

MINI_URI = "builtin://tiny-llama-mini"


def vllm_model(uri: str, **fields: object) -> ServedModel:
    return ServedModel.model_validate({"name": "m", "uri": uri, "engine": "vllm", **fields})


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("hf://Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct"),
        ("hf://gpt2", "gpt2"),
        ("file:///models/llama-3-8b", "/models/llama-3-8b"),
    ],
)
def test_vllm_uri_resolves_to_what_engine_args_loads(uri: str, expected: str) -> None:
    served = vllm_model(uri, maxModelLen=4096, tensorParallel=2)
    assert resolve_served_model(served, 3) == VllmModel(
        model=expected, source="spec.models[3]", max_model_len=4096, tensor_parallel=2
    )


@pytest.mark.parametrize(
    ("uri", "hint"),
    [
        ("hf://org/name/extra", "hf://<org>/<name>"),
        ("hf://org/", "hf://<org>/<name>"),
        ("file://models/llama", "absolute path"),
        ("s3://bucket/llama", "scheme 's3' is not supported by the vLLM engine"),
        (MINI_URI, "set spec.models[1].engine: torch"),
    ],
)
def test_vllm_uri_errors_name_the_field(uri: str, hint: str) -> None:
    with pytest.raises(ValueError, match=r"spec\.models\[1\]\.uri") as error:
        resolve_served_model(vllm_model(uri), 1)
    assert hint in str(error.value)


def test_torch_models_resolve_as_before() -> None:
    torch_model = ServedModel(name="m", uri=MINI_URI, max_model_len=512)
    assert resolve_served_model(torch_model, 0) == resolve_model(MINI_URI, 512)
    with pytest.raises(ValueError, match="not supported by the torch engine"):
        resolve_served_model(ServedModel(name="m", uri="hf://org/name"), 0)


def test_pool_settings_thread_the_engine_and_the_model_position() -> None:
    spec = ModelPoolSpec(
        models=[
            ServedModel(name="tiny", uri=MINI_URI, max_model_len=512),
            vllm_model("hf://org/name", name="big", maxModelLen=8192, tensorParallel=4),
        ]
    )
    options = ServingOptions()
    tiny, big = (pool_settings(model, spec, options, "app") for model in spec.models)
    assert isinstance(tiny.engine.model, ModelConfig)
    assert big.engine.model == VllmModel("org/name", "spec.models[1]", 8192, 4)
    assert big.engine.engine.block_size == options.block_size


def vllm_spec() -> EngineSpec:
    return EngineSpec(VllmModel("org/name", "spec.models[2]", 2048), EngineConfig())


def test_missing_vllm_fails_naming_the_field_and_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(VllmUnavailableError) as error:
        build_engine(vllm_spec())
    message = str(error.value)
    assert "spec.models[2].engine is vllm, but vLLM cannot be imported" in message
    assert "set spec.models[2].engine: torch" in message
    assert "modelfleet[gpu]" in message


def test_missing_cuda_fails_naming_the_field_and_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(VllmUnavailableError) as error:
        build_engine(vllm_spec())
    message = str(error.value)
    assert "spec.models[2].engine is vllm, but no CUDA device is visible" in message
    assert "set spec.models[2].engine: torch" in message
    assert "GPU nodes" in message


def test_torch_spec_still_builds_the_torch_engine() -> None:
    config = ModelConfig(num_layers=1, hidden_size=32, intermediate_size=64, max_positions=64)
    assert isinstance(build_engine(EngineSpec(config, EngineConfig())), TorchEngine)


def test_replicas_of_vllm_models_reserve_their_tensor_parallel_gpus() -> None:
    assert EngineSpec(VllmModel("org/name", "spec.models[0]", 2048, 4), EngineConfig()).gpus() == 4
    assert EngineSpec(ModelConfig(), EngineConfig()).gpus() == 0


def test_the_http_application_refuses_vllm_models_until_it_has_their_tokenizer() -> None:
    wire = {"models": [{"name": "big", "uri": "hf://org/name", "engine": "vllm"}], "replicas": 1}
    with pytest.raises(ValueError, match=r"spec.models\[0\].engine: vllm .* use engine: torch"):
        build(wire)
