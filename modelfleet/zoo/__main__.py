"""``python -m modelfleet.zoo list | build NAME... | build all | eval NAME``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from modelfleet.zoo.cache import ensure_model, load_model, read_current_manifest
from modelfleet.zoo.evaluation import evaluate
from modelfleet.zoo.models import create_model
from modelfleet.zoo.recipes import RECIPES
from modelfleet.zoo.skills import SKILLS


def count_parameters(name: str) -> int:
    """Parameters of the zoo model ``name``, counted without building or allocating it."""
    with torch.device("meta"):
        return create_model(RECIPES[name]).num_parameters()


def list_models() -> None:
    """Print each recipe, whether it is cached, and its held-out accuracy when it is."""
    header = f"{'name':<18}{'arch':<7}{'params':>9}{'vocab':>7}  {'cached':<7}"
    print(header + "".join(f"{skill:>10}" for skill in SKILLS) + "  trained on")
    for name, recipe in RECIPES.items():
        manifest = read_current_manifest(recipe)
        scores = (
            "".join(f"{manifest.accuracy[skill]:>10.0%}" for skill in SKILLS)
            if manifest is not None
            else "".join(f"{'-':>10}" for _ in SKILLS)
        )
        print(
            f"{name:<18}{recipe.architecture.value:<7}{count_parameters(name):>9,}"
            f"{recipe.tokenizer.vocab_size:>7}  {'yes' if manifest else 'no':<7}{scores}"
            f"  {', '.join(recipe.skills)}"
        )


def build_models(names: Sequence[str]) -> None:
    """Build (or find cached) each named model, printing progress as it trains."""
    for name in list(RECIPES) if list(names) == ["all"] else names:
        print(ensure_model(name, progress=lambda line: print(line, flush=True)))


def evaluate_model(name: str) -> None:
    """Load the cached model ``name`` (building it if needed) and print fresh accuracies."""
    model, tokenizer = load_model(name, progress=lambda line: print(line, flush=True))
    for skill, score in evaluate(model, tokenizer).items():
        print(f"{skill:<10}{score:>7.1%}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the zoo command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m modelfleet.zoo", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="recipes, cache state and held-out accuracy")
    build_parser = commands.add_parser("build", help="train models into the cache")
    build_parser.add_argument("names", nargs="+", choices=[*RECIPES, "all"], metavar="NAME|all")
    eval_parser = commands.add_parser("eval", help="per-skill held-out accuracy of a model")
    eval_parser.add_argument("name", choices=list(RECIPES), metavar="NAME")
    args = parser.parse_args(argv)
    if args.command == "list":
        list_models()
    elif args.command == "build":
        build_models(args.names)
    else:
        evaluate_model(args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
