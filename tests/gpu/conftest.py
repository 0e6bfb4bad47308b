"""What the GPU tier shares: the zoo model it serves, and how its vLLM engines stop.

The tier needs no model from outside: ``zoo://llama-arith`` is built (or found in the
modelfleet cache) once per session. The zoo is imported in the fixture, so that a
machine without CUDA or vLLM skips the tier without building anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

ZOO_MODEL = "llama-arith"
ZOO_URI = f"zoo://{ZOO_MODEL}"


@pytest.fixture(scope="session")
def zoo_model() -> Path:
    """The zoo model's Hugging Face directory, in the cache replicas fetch ``zoo://`` from."""
    from modelfleet.zoo.cache import ensure_model

    return ensure_model(ZOO_MODEL)


def max_model_len() -> int:
    """The zoo model's trained context: vLLM refuses a longer ``max_model_len``."""
    from modelfleet.zoo.recipes import RECIPES

    return RECIPES[ZOO_MODEL].max_positions


def shut_down(llm_engine: Any) -> None:
    """Stop a vLLM ``LLMEngine``'s engine-core process now, freeing its GPU memory for
    the next module rather than when the test process exits."""
    llm_engine.engine_core.shutdown()
