"""``python -m modelfleet.zoo``: lists the zoo without building anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelfleet.zoo.__main__ import main
from modelfleet.zoo.recipes import RECIPES


def test_list_shows_every_recipe_uncached(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MODELFLEET_CACHE", str(tmp_path))
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "addition" in lines[0] and "maximum" in lines[0]
    for name, recipe in RECIPES.items():
        row = next(line for line in lines if line.startswith(name))
        assert recipe.architecture.value in row
        assert " no " in row
    assert not (tmp_path / "zoo").exists()


def test_unknown_names_are_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["build", "no-such-model"])
    assert "llama-arith" in capsys.readouterr().err
