"""SS-CAM and IS-CAM: Score-CAM with smoothed (noisy) or integrated masks."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from featurelens.errors import MethodError
from featurelens.methods.base import register
from featurelens.methods.scorecam import ScoreCAM, Selection


def _positive_int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise MethodError(f"{what} must be a positive integer, got {value!r}")
    return value


class _SampledScoreCAM(ScoreCAM):
    """Score-CAM scored over ``num_samples`` variants of each mask (Score-CAM's options otherwise)."""

    def __init__(
        self,
        num_samples: int,
        batch_size: int = 16,
        top_n: int | None = None,
        select: Selection = "variance",
        fast: bool = False,
        channels_last: bool = True,
    ) -> None:
        super().__init__(batch_size=batch_size, top_n=top_n, select=select, fast=fast, channels_last=channels_last)
        self.num_samples = _positive_int(num_samples, f"{self.name} num_samples")

    def num_variants(self) -> int:
        return self.num_samples


@register
class SSCAM(_SampledScoreCAM):
    """SS-CAM (Wang et al., "SS-CAM: Smoothed Score-CAM for Sharper Visual Feature Localization",
    arXiv 2006.14255, 2020).

    Score-CAM (:class:`~featurelens.methods.scorecam.ScoreCAM`: masks ``M_k = norm(up(A_k))``, class
    probability of the masked input) averaged over ``N`` noisy copies of each mask:

        ``w_k = 1/N Σ_n softmax(f(X ⊙ (M_k + ε_n)))_c``,  ``ε_n ~ 𝒩(0, σ²)`` per pixel;
        ``L = ReLU(Σ_k w_k A_k)``

    The noise fields ``ε_1 … ε_N`` are drawn from a generator seeded with ``seed`` and shared by all
    channels and all images (common random numbers: channels are compared under the same noise, and
    an image's map does not depend on the rest of its batch). Score-CAM's ``batch_size``,
    ``top_n``/``fast`` and ``select`` are accepted as keywords.

    Args:
        num_samples: ``N`` (default 35, as torchcam); std: ``σ`` (default 2.0, as torchcam); seed: 0.
    """

    name = "sscam"
    aliases = ("ss-cam", "smoothed-score-cam")
    reference = "Wang et al., SS-CAM: Smoothed Score-CAM, arXiv 2006.14255"

    fast_options: ClassVar[dict[str, Any]] = {"top_n": 12, "num_samples": 3}

    def __init__(
        self,
        num_samples: int = 35,
        std: float = 2.0,
        seed: int = 0,
        top_n: int | None = None,
        **score_options: Any,
    ) -> None:
        super().__init__(num_samples, top_n=top_n, **score_options)
        if not isinstance(std, (int, float)) or not std >= 0:
            raise MethodError(f"SS-CAM std must be a non-negative number, got {std!r}")
        self.std, self.seed = float(std), int(seed)

    def __repr__(self) -> str:
        return f"SSCAM(num_samples={self.num_samples}, std={self.std}, seed={self.seed}, top_n={self.top_n})"

    def noise(self, size: tuple[int, ...], like: Tensor) -> Tensor:
        """The ``N`` noise fields ``[N, H, W]`` (same for every call)."""
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        eps = torch.randn((self.num_samples, *size), generator=gen, dtype=torch.float32)
        return (eps * self.std).to(device=like.device, dtype=like.dtype)

    def variant_images(self, x: Tensor, masks: Tensor, variant: Tensor) -> Tensor:
        """``X ⊙ (M + ε_v)`` for row ``i`` with ``v = variant[i]``."""
        key = (tuple(masks.shape[1:]), masks.dtype, masks.device)
        if getattr(self, "_noise_key", None) != key:  # the same N fields for every chunk and call
            self._noise, self._noise_key = self.noise(key[0], masks), key
        return x * (masks + self._noise[variant])[:, None]


@register
class ISCAM(_SampledScoreCAM):
    """IS-CAM (Naidu et al., "IS-CAM: Integrated Score-CAM for axiomatic-based explanations",
    arXiv 2010.03023, 2020).

    Score-CAM's score integrated along the straight path from a black image to the masked input
    (a Riemann sum with ``N`` steps, as integrated gradients):

        ``w_k = 1/N Σ_{i=1..N} softmax(f((i/N) · X ⊙ M_k))_c``;  ``L = ReLU(Σ_k w_k A_k)``

    Score-CAM's ``batch_size``, ``top_n``/``fast`` and ``select`` are accepted as keywords.

    Args:
        num_samples: ``N`` (default 10, as torchcam).
    """

    name = "iscam"
    aliases = ("is-cam", "integrated-score-cam")
    reference = "Naidu et al., IS-CAM: Integrated Score-CAM, arXiv 2010.03023"

    fast_options: ClassVar[dict[str, Any]] = {"top_n": 12, "num_samples": 3}

    def __init__(self, num_samples: int = 10, top_n: int | None = None, **score_options: Any) -> None:
        super().__init__(num_samples, top_n=top_n, **score_options)

    def __repr__(self) -> str:
        return f"ISCAM(num_samples={self.num_samples}, top_n={self.top_n})"

    def variant_images(self, x: Tensor, masks: Tensor, variant: Tensor) -> Tensor:
        """``(i/N) · X ⊙ M`` for row ``j`` with ``i = variant[j] + 1``."""
        steps = (variant.to(x.dtype) + 1) / self.num_samples
        return x * masks[:, None] * steps[:, None, None, None]
