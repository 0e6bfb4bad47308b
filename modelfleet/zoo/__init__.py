"""A zoo of tiny language models trained on CPU on skills with exact answers.

No model hub is reachable where the platform is built and tested, so it grows its own
models: Llama and Qwen2 architectures, two BPE vocabularies, different sizes and different
skills. Each is a standard Hugging Face directory with a ``zoo.json`` of held-out accuracy
per skill, so serving, routing, fusion and federated training can be judged by accuracy.

``ensure_model(name)`` returns a model's cached directory, training it the first time.
"""

from modelfleet.zoo.cache import cache_root, ensure_model, ensure_recipe, load_model, model_dir
from modelfleet.zoo.manifest import Manifest, read_manifest
from modelfleet.zoo.recipes import RECIPES, Architecture, Recipe
from modelfleet.zoo.skills import SKILLS, Example, Skill, Split

__all__ = [
    "RECIPES",
    "SKILLS",
    "Architecture",
    "Example",
    "Manifest",
    "Recipe",
    "Skill",
    "Split",
    "cache_root",
    "ensure_model",
    "ensure_recipe",
    "load_model",
    "model_dir",
    "read_manifest",
]
