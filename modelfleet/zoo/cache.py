"""The on-disk zoo: each model is built once per recipe and reused by every process.

Models live outside the repository, under ``$MODELFLEET_CACHE/zoo/<name>/`` (default
``~/.cache/modelfleet``). A model is rebuilt when its ``zoo.json`` is missing or records
another recipe hash, so editing a recipe is enough to refresh it. Builds go to a temporary
directory that is renamed into place, so a reader never sees half a model, and run under
a per-model file lock, so concurrent processes build each model once.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from transformers import AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerBase, Qwen2ForCausalLM

from modelfleet.zoo.build import build
from modelfleet.zoo.manifest import Manifest, read_manifest
from modelfleet.zoo.models import CausalLM
from modelfleet.zoo.recipes import RECIPES, Architecture, Recipe, hash_recipe
from modelfleet.zoo.training import Progress


def cache_root() -> Path:
    """``$MODELFLEET_CACHE``, or ``~/.cache/modelfleet`` when it is unset or empty."""
    configured = os.environ.get("MODELFLEET_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "modelfleet"


def model_dir(name: str) -> Path:
    """Where the zoo model ``name`` is, or will be, cached."""
    return cache_root() / "zoo" / name


def read_current_manifest(recipe: Recipe) -> Manifest | None:
    """The manifest of ``recipe``'s cached model, or None when it is missing or stale."""
    manifest = read_manifest(model_dir(recipe.name))
    if manifest is None or manifest.recipe_hash != hash_recipe(recipe):
        return None
    return manifest


@contextmanager
def _hold_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path``; the file is left behind, since deleting a
    lock file while another process waits on it lets two processes hold "the" lock."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_leftovers(target: Path) -> None:
    """Delete build and retired directories of ``target`` that a killed process left; only
    called under the model's lock, so none of them belongs to a build in progress."""
    for pattern in (f".{target.name}.build.*", f".{target.name}.old.*"):
        for leftover in target.parent.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)


def _install(staging: Path, target: Path) -> None:
    """Move the finished build ``staging`` to ``target``, replacing a stale model there.

    ``mkdtemp`` makes directories private; a cached model is readable by every user.
    """
    staging.chmod(0o755)
    if target.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        target.rename(retired / target.name)
        staging.rename(target)
        shutil.rmtree(retired)
    else:
        staging.rename(target)


def ensure_recipe(recipe: Recipe, progress: Progress | None = None) -> Path:
    """The directory of ``recipe``'s model, built first unless a current one is cached."""
    target = model_dir(recipe.name)
    if read_current_manifest(recipe) is not None:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _hold_lock(target.parent / f".{recipe.name}.lock"):
        if read_current_manifest(recipe) is not None:
            return target
        _remove_leftovers(target)
        staging = Path(tempfile.mkdtemp(prefix=f".{recipe.name}.build.", dir=target.parent))
        try:
            build(recipe, staging, progress)
            _install(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if progress is not None:
        progress(f"{recipe.name}: cached at {target}")
    return target


def ensure_model(name: str, progress: Progress | None = None) -> Path:
    """The directory of the zoo model ``name``, trained first if it is not cached yet or
    was built from another recipe. ``progress`` receives human-readable build lines."""
    if name not in RECIPES:
        raise KeyError(f"unknown zoo model {name!r}; known: {sorted(RECIPES)}")
    return ensure_recipe(RECIPES[name], progress)


def load_model(
    name: str, progress: Progress | None = None
) -> tuple[CausalLM, PreTrainedTokenizerBase]:
    """The zoo model ``name``, in inference mode, and its tokenizer, loaded from the cache."""
    directory = ensure_model(name, progress)
    if RECIPES[name].architecture is Architecture.LLAMA:
        model: CausalLM = LlamaForCausalLM.from_pretrained(directory)
    else:
        model = Qwen2ForCausalLM.from_pretrained(directory)
    return model, AutoTokenizer.from_pretrained(directory)
