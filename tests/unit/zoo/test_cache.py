"""The zoo cache: built once per recipe, rebuilt when the recipe changes, safe to share."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from modelfleet.zoo import cache
from modelfleet.zoo.manifest import Manifest, read_manifest, write_manifest
from modelfleet.zoo.recipes import RECIPES, Recipe, hash_recipe
from modelfleet.zoo.skills import SKILLS

RECIPE = RECIPES["qwen-words"]


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """Point the cache at ``tmp_path`` and replace training by a quick fake build that
    records each recipe hash it builds."""
    monkeypatch.setenv("MODELFLEET_CACHE", str(tmp_path))
    built: list[str] = []

    def fake_build(recipe: Recipe, directory: Path, progress: object = None) -> Manifest:
        time.sleep(0.05)
        built.append(hash_recipe(recipe))
        (directory / "config.json").write_text("{}")
        manifest = Manifest(
            name=recipe.name,
            recipe_hash=hash_recipe(recipe),
            architecture=recipe.architecture.value,
            tokenizer=recipe.tokenizer.name,
            vocab_size=recipe.tokenizer.vocab_size,
            skills=tuple(recipe.skills),
            seed=recipe.seed,
            parameters=1,
            train_seconds=0.0,
            accuracy=dict.fromkeys(SKILLS, 0.0),
            eval_examples=0,
        )
        write_manifest(directory, manifest)
        return manifest

    monkeypatch.setattr(cache, "build", fake_build)
    return built


def test_cache_root_honours_modelfleet_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MODELFLEET_CACHE", str(tmp_path / "elsewhere"))
    assert cache.cache_root() == tmp_path / "elsewhere"
    assert cache.model_dir("llama-arith") == tmp_path / "elsewhere" / "zoo" / "llama-arith"
    monkeypatch.delenv("MODELFLEET_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache.cache_root() == tmp_path / ".cache" / "modelfleet"


def test_a_model_is_built_once_then_reused(builds: list[str]) -> None:
    lines: list[str] = []
    directory = cache.ensure_model(RECIPE.name, progress=lines.append)
    assert directory == cache.model_dir(RECIPE.name)
    assert read_manifest(directory) is not None
    assert directory.stat().st_mode & 0o777 == 0o755
    assert cache.ensure_model(RECIPE.name) == directory
    assert builds == [hash_recipe(RECIPE)]
    assert any("cached at" in line for line in lines)
    assert [p.name for p in directory.parent.iterdir() if not p.name.endswith(".lock")] == [
        RECIPE.name
    ]


def test_a_changed_recipe_is_rebuilt_in_place(builds: list[str]) -> None:
    directory = cache.ensure_recipe(RECIPE)
    changed = replace(RECIPE, steps=RECIPE.steps + 1)
    assert cache.read_current_manifest(changed) is None
    assert cache.ensure_recipe(changed) == directory
    manifest = read_manifest(directory)
    assert manifest is not None and manifest.recipe_hash == hash_recipe(changed)
    assert builds == [hash_recipe(RECIPE), hash_recipe(changed)]
    assert [p.name for p in directory.parent.iterdir() if not p.name.endswith(".lock")] == [
        RECIPE.name
    ]


def test_a_model_without_a_readable_manifest_is_rebuilt(builds: list[str]) -> None:
    directory = cache.ensure_recipe(RECIPE)
    (directory / "zoo.json").write_text("not json")
    cache.ensure_recipe(RECIPE)
    assert len(builds) == 2


def test_concurrent_callers_build_once(builds: list[str]) -> None:
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.ensure_recipe(RECIPE)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert builds == [hash_recipe(RECIPE)]
    assert results == [cache.model_dir(RECIPE.name)] * 4


def test_a_failed_build_leaves_nothing_behind(
    monkeypatch: pytest.MonkeyPatch, builds: list[str]
) -> None:
    def failing_build(recipe: Recipe, directory: Path, progress: object = None) -> Manifest:
        (directory / "partial").write_text("")
        raise RuntimeError("out of memory")

    monkeypatch.setattr(cache, "build", failing_build)
    with pytest.raises(RuntimeError):
        cache.ensure_recipe(RECIPE)
    assert not cache.model_dir(RECIPE.name).exists()
    assert [p.name for p in cache.model_dir(RECIPE.name).parent.iterdir()] == [
        f".{RECIPE.name}.lock"
    ]


def test_unknown_models_are_named_in_the_error(builds: list[str]) -> None:
    with pytest.raises(KeyError, match="llama-arith"):
        cache.ensure_model("no-such-model")


def test_leftovers_of_a_killed_build_are_removed(builds: list[str]) -> None:
    zoo = cache.model_dir(RECIPE.name).parent
    for leftover in (f".{RECIPE.name}.build.abc", f".{RECIPE.name}.old.def"):
        (zoo / leftover).mkdir(parents=True)
        (zoo / leftover / "model.safetensors").write_text("")
    cache.ensure_recipe(RECIPE)
    assert sorted(p.name for p in zoo.iterdir()) == [f".{RECIPE.name}.lock", RECIPE.name]
