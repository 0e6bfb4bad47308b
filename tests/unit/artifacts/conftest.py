"""A fresh model and adapter directory per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from .builders import write_adapter_dir, write_model_dir


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return write_model_dir(tmp_path / "model")


@pytest.fixture
def adapter_dir(tmp_path: Path) -> Path:
    return write_adapter_dir(tmp_path / "adapter")
