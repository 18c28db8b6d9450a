"""The embedding modes of a network explanation (no heavy imports: the CLI reads them at start-up).

``paper`` (scikit-learn t-SNE as the authors call it), ``faithful`` (our exact torch t-SNE),
``stable`` (spectral embedding of the t-SNE affinities), ``pca`` (Ward on the PCA space).
"""

from __future__ import annotations

from featurelens.errors import FeaturelensError

MODES = ("paper", "faithful", "stable", "pca")
MODE_ALIASES = {"fast": "stable", "sklearn": "paper"}
DEFAULT_MODE = "paper"


def canonical_mode(mode: str) -> str:
    """The mode's own name (``"fast"`` → ``"stable"``, ``"sklearn"`` → ``"paper"``); unknown → error."""
    name = MODE_ALIASES.get(mode, mode)
    if name not in MODES:
        raise FeaturelensError(f"unknown network mode {mode!r}; use one of {', '.join(MODES)} "
                               f"(aliases: {', '.join(f'{a}={b}' for a, b in MODE_ALIASES.items())})")
    return name
