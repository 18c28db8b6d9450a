"""Embedding models: a module mapping images to ``[B, D]``, a named feature layer ``A`` and a head.

An :class:`Embedder` bundles

* ``model``: any ``nn.Module`` whose output is the embedding ``e`` ``[B, D]``;
* ``layer``: the dotted name of the feature layer ``A`` ``[B, K, h, w]`` read by the head;
* ``head``: an :class:`EmbeddingHead` describing how ``e`` is computed from ``A``:
  ``f = pool(A)`` (GAP, GeM or max) → ``z = W f + c`` (optional linear projection) →
  ``e = z / ‖z‖`` (optional L2 normalisation).

SFAM needs ``A`` of both images and the head (to derive channel scores through it), never a
backward pass through the network: :meth:`Embedder.run` does one forward of the pair with the
engine's :class:`~featurelens.engine.Capture` (``gradients=False``). The head is checked once per
call against the model's own output, so a head that does not describe the model is a clear error.

Registered embedders (:func:`load_embedder`): ``efficientnet_lite0`` (pooled 1280-d ``head``
features of the ImageNet model, GAP, no projection), ``shapes_metric`` (the triplet-trained
CNN of :mod:`featurelens.models.metric_shapes`, GAP → Linear(128, 64) → L2) and ``dlib_face``
(dlib's face ResNet of :mod:`featurelens.models.dlib_face` on 150×150 chips, layer ``stage5``
``[B, 256, 2, 2]``, GAP → Linear(256, 128, no bias), compared by Euclidean distance).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from featurelens.engine import Capture, model_device, resolve_layer
from featurelens.errors import ModelError
from featurelens.imaging import as_pil

POOLINGS = ("avg", "gem", "max")


class EmbeddingShapeError(ModelError):
    """The model's output is not an embedding ``[B, D]`` or the layer is not ``[B, K, h, w]``."""


class EmbeddingHead(nn.Module):
    """``e = normalize?(W · pool(A) + c)``.

    Args:
        pooling: ``"avg"`` (GAP, ``f_k = mean_ij A_kij``), ``"gem"`` (generalised mean,
            ``f_k = (mean_ij max(A_kij, ε)^p)^{1/p}``, Radenović et al. 2018) or ``"max"``.
        projection: an ``nn.Linear`` (``K → D``) or ``None`` (identity).
        normalize: divide the result by its L2 norm.
        p: the GeM exponent.
    """

    def __init__(
        self,
        pooling: str = "avg",
        projection: nn.Linear | None = None,
        normalize: bool = False,
        p: float = 3.0,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ModelError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")
        self.pooling = pooling
        self.projection = projection
        self.normalize = normalize
        self.p = float(p)
        self.eps = float(eps)

    @property
    def linear(self) -> bool:
        """True when ``z`` is an affine function of ``f`` (always: identity or ``nn.Linear``)."""
        return True

    def pool(self, a: Tensor) -> Tensor:
        """``f = pool(A)``: ``[B, K, h, w] → [B, K]``."""
        if self.pooling == "avg":
            return a.mean(dim=(2, 3))
        if self.pooling == "max":
            return a.amax(dim=(2, 3))
        return a.clamp_min(self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)

    def project(self, f: Tensor) -> Tensor:
        """``z = W f + c`` (or ``f``)."""
        return self.projection(f) if self.projection is not None else f

    def finish(self, z: Tensor) -> Tensor:
        return F.normalize(z, dim=1) if self.normalize else z

    def forward(self, a: Tensor) -> Tensor:
        return self.finish(self.project(self.pool(a)))

    def describe(self) -> str:
        parts = [{"avg": "GAP", "gem": f"GeM(p={self.p:g})", "max": "max"}[self.pooling]]
        if self.projection is not None:
            parts.append(f"Linear({self.projection.in_features}, {self.projection.out_features})")
        if self.normalize:
            parts.append("L2")
        return " → ".join(parts)


@dataclass
class PairFeatures:
    """What one forward pass of images gives SFAM: feature maps, pooled features and embeddings."""

    activations: Tensor  # A [N, K, h, w]
    pooled: Tensor  # f [N, K]
    projected: Tensor  # z [N, D] (before normalisation)
    embeddings: Tensor  # e [N, D] (the model's output)


@dataclass
class Embedder:
    """An embedding model with its feature layer and head (see the module docstring)."""

    name: str
    model: nn.Module
    layer: str
    head: EmbeddingHead
    preprocess: Callable[[list[Image.Image]], Tensor]
    input_size: tuple[int, int]
    class_names: Sequence[str] | None = None
    notes: dict[str, str] = field(default_factory=dict)
    check_head: bool = True
    #: per-metric default SFAM CIS rule for this model (chosen by measurement), else the global default
    default_rules: dict[str, str] = field(default_factory=dict)

    def rule_for(self, metric: str, rule: str | None = None) -> str | None:
        """``rule`` if given, else this model's default for ``metric`` (None: the global default)."""
        return rule or self.default_rules.get(metric)

    def __post_init__(self) -> None:
        resolve_layer(self.model, self.layer)  # typed error for an unknown layer
        self.model.eval()

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    def prepare(self, images: Sequence[Image.Image | np.ndarray | str | Path]) -> Tensor:
        """Load/convert images (any size) and return the model-ready batch on the model's device."""
        return self.preprocess([as_pil(im) for im in images]).to(self.device)

    def model_view(self, image: Image.Image | np.ndarray | str | Path) -> np.ndarray:
        """The image as the model sees it (resized to the input size, RGB), H×W×3 uint8."""
        pil = as_pil(image).resize((self.input_size[1], self.input_size[0]), Image.BILINEAR)
        return np.asarray(pil.convert("RGB"), dtype=np.uint8)

    # -- forward ------------------------------------------------------------
    def _check_output(self, out: object, n: int) -> Tensor:
        if not isinstance(out, Tensor):
            raise EmbeddingShapeError(f"model {self.name!r} returns {type(out).__name__}, not an embedding tensor [B, D]")
        if out.ndim != 2 or out.shape[0] != n:
            raise EmbeddingShapeError(
                f"model {self.name!r} returns a tensor of shape {list(out.shape)}; an embedding model must return [B, D] "
                f"(B = {n} images here)"
            )
        return out

    @torch.no_grad()
    def embed(self, x: Tensor, batch_size: int = 64) -> Tensor:
        """Embeddings ``[N, D]`` of a prepared batch, computed in chunks (no hooks)."""
        self.model.eval()
        outs = []
        for i in range(0, x.shape[0], batch_size):
            chunk = x[i : i + batch_size]
            outs.append(self._check_output(self.model(chunk), chunk.shape[0]))
        if not outs:
            raise EmbeddingShapeError("no images to embed")
        return torch.cat(outs)

    def run(self, x: Tensor) -> PairFeatures:
        """One forward of ``x`` with ``A`` captured (no autograd): feature maps, f, z and e."""
        with Capture(self.model, self.layer, gradients=False) as cap:
            out = cap.forward(x)
            acts = cap.activations[self.layer]
        out = self._check_output(out, x.shape[0])
        a = acts[0]
        if len(acts) != 1:
            raise ModelError(f"layer {self.layer!r} ran {len(acts)} times in one forward; SFAM needs it once per image")
        if a.ndim != 4:
            raise EmbeddingShapeError(f"feature layer {self.layer!r} gives shape {list(a.shape)}, not [B, K, h, w]")
        with torch.no_grad():
            f = self.head.pool(a)
            z = self.head.project(f)
            e = self.head.finish(z)
        if self.check_head:
            if e.shape != out.shape or not torch.allclose(e, out, rtol=1e-3, atol=1e-4 * (1 + float(out.abs().max()))):
                raise ModelError(
                    f"the head {self.head.describe()} on layer {self.layer!r} does not reproduce the output of "
                    f"model {self.name!r} (max difference {float((e - out).abs().max()) if e.shape == out.shape else 'shape'}); "
                    "describe the model's head correctly (pooling, projection, normalisation)"
                )
        return PairFeatures(a, f, z, out)

    def run_pairs(self, xa: Tensor, xb: Tensor) -> tuple[PairFeatures, PairFeatures]:
        """Features of both sides in one forward when the inputs have the same size."""
        if xa.shape[1:] == xb.shape[1:]:
            both = self.run(torch.cat([xa, xb]))
            n = xa.shape[0]
            return _split(both, 0, n), _split(both, n, 2 * n)
        return self.run(xa), self.run(xb)


def _split(p: PairFeatures, lo: int, hi: int) -> PairFeatures:
    return PairFeatures(p.activations[lo:hi], p.pooled[lo:hi], p.projected[lo:hi], p.embeddings[lo:hi])


# ---------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------
class Lite0Features(nn.Module):
    """EfficientNet-Lite0's pooled 1280-d ``head`` features as an embedding model."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.stem = net.stem
        self.blocks = net.blocks
        self.head = net.head
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.flatten(self.pool(self.head(self.blocks(self.stem(x)))))


def _lite0(spec: object | None = None) -> Embedder:
    from featurelens.models import load_model

    spec = spec if spec is not None else load_model("efficientnet_lite0")
    return Embedder(
        name="efficientnet_lite0",
        model=Lite0Features(spec.model).eval(),  # type: ignore[attr-defined]
        layer="head",
        head=EmbeddingHead("avg"),
        preprocess=spec.preprocess,  # type: ignore[attr-defined]
        input_size=spec.input_size,  # type: ignore[attr-defined]
        notes={"features": "EfficientNet-Lite0 (ImageNet-1k) pooled head features, 1280-d"},
    )


def _shapes() -> Embedder:
    from featurelens.models.metric_shapes import (
        INPUT_SIZE,
        SHAPES_CLASSES,
        load_shapes_metric,
        preprocess_shapes,
    )

    net = load_shapes_metric()
    return Embedder(
        name="shapes_metric",
        model=net,
        layer="features",
        head=EmbeddingHead("avg", projection=net.proj, normalize=True),
        preprocess=preprocess_shapes,
        input_size=INPUT_SIZE,
        class_names=SHAPES_CLASSES,
        notes={"training": "animal-shape-mnist, triplet loss (scripts/train_metric_model.py)"},
    )


def _dlib_face() -> Embedder:
    from featurelens.models.dlib_face import (
        CHIP_SIZE,
        SAME_PERSON_THRESHOLD,
        load_dlib_face,
        preprocess_chips,
    )

    net = load_dlib_face()
    return Embedder(
        name="dlib_face",
        model=net,
        layer="stage5",
        head=EmbeddingHead("avg", projection=net.fc),
        preprocess=preprocess_chips,
        input_size=(CHIP_SIZE, CHIP_SIZE),
        notes={"model": "dlib's face-recognition ResNet (metric loss), 150×150 aligned chips → 128-d",
               "threshold": f"same person when the Euclidean distance < {SAME_PERSON_THRESHOLD}",
               "faces": "photos are detected and aligned by featurelens.similarity.faces (dlib-bin)"},
        # chosen by benchmarks/bench_faces.py: the only Euclidean rule whose maps are not emptied by the ReLU
        default_rules={"euclidean": "euclidean"},
    )


EMBEDDERS: dict[str, Callable[[], Embedder]] = {"efficientnet_lite0": _lite0, "shapes_metric": _shapes, "dlib_face": _dlib_face}
DEFAULT_EMBEDDER = "efficientnet_lite0"


def register_embedder(name: str, factory: Callable[[], Embedder]) -> None:
    """Register an embedding model factory under ``name``."""
    EMBEDDERS[name] = factory


def from_module(
    model: nn.Module,
    layer: str,
    head: EmbeddingHead | None = None,
    *,
    preprocess: Callable[[list[Image.Image]], Tensor] | None = None,
    input_size: tuple[int, int] = (224, 224),
    name: str = "custom",
) -> Embedder:
    """Wrap any module returning ``[B, D]`` whose embedding is ``head(A)`` with ``A`` = ``layer``'s output."""
    from featurelens.models import normalize_preprocess

    return Embedder(name, model.eval(), layer, head or EmbeddingHead("avg"), preprocess or normalize_preprocess(input_size), input_size)


def load_embedder(name: str = DEFAULT_EMBEDDER, *, trust: bool = False) -> Embedder:
    """A registered embedder by name, or a checkpoint path (TorchScript / trusted pickle) whose output is
    ``GAP(default layer)`` (the head is checked against the model output)."""
    if name in EMBEDDERS:
        return EMBEDDERS[name]()
    if Path(name).exists() or Path(name).suffix in (".pt", ".pth", ".ts", ".jit"):
        from featurelens.models import load_checkpoint

        spec = load_checkpoint(name, trust=trust)
        if isinstance(spec.model, torch.jit.ScriptModule):
            raise ModelError(
                f"{spec.name}: TorchScript modules do not support the forward hooks SFAM needs to read the feature "
                "layer; save the model with torch.save(model) and pass --trust"
            )
        return Embedder(spec.name, spec.model, spec.resolve_default_layer(), EmbeddingHead("avg"), spec.preprocess, spec.input_size)
    raise ModelError(f"unknown embedding model {name!r}; available: {', '.join(sorted(EMBEDDERS))} or a checkpoint path")
