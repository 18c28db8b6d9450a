"""Targets: callables ``model_output -> scores[B]`` that say *what* is being explained.

Any callable with that contract works (a lambda, a similarity to a reference embedding, ...).
The classes here cover classifiers:

* :class:`Predicted` – the top-1 class of each sample (the default);
* :class:`ClassTarget` – given class indices, as a raw logit (default) or a softmax probability;
* :func:`Logit` / :func:`Probability` – shorthands for the two score kinds.

Structured outputs:

* :class:`SegmentationTarget` – the sum of a class's logits over a mask (``[B, K, H, W]`` outputs);
* :class:`BoxTarget` – detection outputs: the score of the best-matching box per reference box at
  an IoU threshold;
* :class:`OutputElement` – one element of a tuple / dict output, scored by an inner target.

Writing a target: any callable ``output -> Tensor[B]`` that is differentiable in the output (for
gradient methods); give it an ``indices(output) -> LongTensor[B]`` method when it explains one class
per sample (Score-CAM, CAM and the smoothing wrappers then use the class).

Class targets validate their indices against the batch: one index is broadcast to the whole batch
explicitly; a list must have exactly one index per sample (never silently truncated or recycled).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

from featurelens.errors import TargetError

ScoreKind = Literal["logit", "probability", "log_probability"]


@runtime_checkable
class Target(Protocol):
    def __call__(self, output: Tensor) -> Tensor: ...


def _check_logits(output: Tensor) -> Tensor:
    if not isinstance(output, Tensor):
        raise TargetError(f"class targets need a [B, C] tensor output, got {type(output).__name__}")
    if output.ndim != 2:
        raise TargetError(f"class targets need a [B, C] output, got shape {tuple(output.shape)}")
    return output


def _score(output: Tensor, index: Tensor, kind: ScoreKind) -> Tensor:
    if kind == "logit":
        values = output
    elif kind == "probability":
        values = torch.softmax(output, dim=1)
    elif kind == "log_probability":
        values = torch.log_softmax(output, dim=1)
    else:  # pragma: no cover - guarded in __init__
        raise TargetError(f"unknown score kind {kind!r}")
    return values.gather(1, index.view(-1, 1)).squeeze(1)


class ClassTarget:
    """Score of given classes: ``output[i, c_i]`` (or its softmax probability).

    Args:
        classes: one class index for the whole batch, or exactly one per sample.
        kind: ``"logit"`` (pre-softmax, the usual Grad-CAM target), ``"probability"`` or ``"log_probability"``.
    """

    def __init__(self, classes: int | Sequence[int] | Tensor, kind: ScoreKind = "logit") -> None:
        if kind not in ("logit", "probability", "log_probability"):
            raise TargetError(f"unknown score kind {kind!r}; use 'logit', 'probability' or 'log_probability'")
        if isinstance(classes, Tensor):
            classes = classes.detach().flatten().tolist()
        if isinstance(classes, bool):
            raise TargetError("a class index must be an integer")
        if isinstance(classes, int):
            self.classes: list[int] | int = classes
        else:
            try:
                self.classes = [int(c) for c in classes]
            except (TypeError, ValueError):
                raise TargetError(f"class indices must be integers, got {classes!r}") from None
            if not self.classes:
                raise TargetError("an empty list of class indices")
        self.kind: ScoreKind = kind

    def indices(self, output: Tensor) -> Tensor:
        output = _check_logits(output)
        batch, n_classes = output.shape
        if isinstance(self.classes, int):
            idx = [self.classes] * batch  # explicit broadcast of a single target
        else:
            if len(self.classes) != batch:
                raise TargetError(
                    f"{len(self.classes)} target classes for a batch of {batch}; give one class for the "
                    "whole batch or exactly one per sample"
                )
            idx = self.classes
        bad = [c for c in idx if not 0 <= c < n_classes]
        if bad:
            raise TargetError(f"class index {bad[0]} is out of range for a model with {n_classes} outputs")
        return torch.tensor(idx, dtype=torch.long, device=output.device)

    def __call__(self, output: Tensor) -> Tensor:
        return _score(output, self.indices(output), self.kind)

    def __repr__(self) -> str:
        return f"ClassTarget({self.classes!r}, kind={self.kind!r})"


class Predicted:
    """Score of each sample's top-1 class (argmax of the output)."""

    def __init__(self, kind: ScoreKind = "logit") -> None:
        if kind not in ("logit", "probability", "log_probability"):
            raise TargetError(f"unknown score kind {kind!r}")
        self.kind: ScoreKind = kind

    def indices(self, output: Tensor) -> Tensor:
        return _check_logits(output).argmax(dim=1)

    def __call__(self, output: Tensor) -> Tensor:
        return _score(output, self.indices(output).detach(), self.kind)

    def __repr__(self) -> str:
        return f"Predicted(kind={self.kind!r})"


def Logit(classes: int | Sequence[int] | Tensor | None = None) -> ClassTarget | Predicted:
    """The raw logit of ``classes`` (of the predicted class when None)."""
    return Predicted("logit") if classes is None else ClassTarget(classes, "logit")


def Probability(classes: int | Sequence[int] | Tensor | None = None) -> ClassTarget | Predicted:
    """The softmax probability of ``classes`` (of the predicted class when None)."""
    return Predicted("probability") if classes is None else ClassTarget(classes, "probability")


TargetLike = Callable[[Tensor], Tensor] | int | Sequence[int] | Tensor | None


def as_target(target: TargetLike) -> Callable[[Tensor], Tensor]:
    """Normalise user input: None → predicted class; int / list / tensor → class indices; callable → itself."""
    if target is None:
        return Predicted()
    if isinstance(target, (int, Tensor)) or (
        isinstance(target, Sequence) and not isinstance(target, str) and not callable(target)
    ):
        return ClassTarget(target)  # type: ignore[arg-type]
    if callable(target):
        return target
    raise TargetError(
        f"a target is a class index, a list of indices or a callable, got {type(target).__name__}"
    )


def evaluate_target(target: Callable[[Tensor], Tensor], output: Tensor, batch: int) -> Tensor:
    """Call ``target`` on ``output`` and check it returns one finite-shaped score per sample."""
    scores = target(output)
    if not isinstance(scores, Tensor):
        raise TargetError(f"a target must return a tensor of shape [B], got {type(scores).__name__}")
    if scores.ndim == 0 and batch == 1:
        scores = scores.reshape(1)
    if scores.ndim != 1 or scores.shape[0] != batch:
        raise TargetError(
            f"a target must return one score per sample, shape [{batch}], got {tuple(scores.shape)}"
        )
    return scores


def target_indices(target: Callable[[Tensor], Tensor], output: Tensor) -> Tensor | None:
    """The class index each sample is explained for, when the target knows it."""
    indices = getattr(target, "indices", None)
    if callable(indices):
        found = indices(output)
        return None if found is None else found.detach()
    return None


# ---------------------------------------------------------------------------
# structured targets: segmentation, detection, one element of a tuple / dict output
# ---------------------------------------------------------------------------
class SegmentationTarget:
    """Sum of one class's logits over a mask, for segmentation outputs ``[B, K, H, W]``:

        ``y_b = Σ_ij output[b, c, i, j] · mask[b, i, j]``

    Args:
        category: the class ``c``.
        mask: ``[H, W]`` (shared by the batch) or ``[B, H, W]``, boolean or float weights (e.g. the
            pixels the model assigns to ``c``: ``output.argmax(1) == c``).
    """

    def __init__(self, category: int, mask: Tensor) -> None:
        if isinstance(category, bool) or not isinstance(category, int):
            raise TargetError(f"a segmentation category is an integer, got {category!r}")
        if not isinstance(mask, Tensor) or mask.ndim not in (2, 3):
            raise TargetError("a segmentation mask is a [H, W] or [B, H, W] tensor")
        self.category = category
        self.mask = mask.detach()

    def __call__(self, output: Tensor) -> Tensor:
        if not isinstance(output, Tensor) or output.ndim != 4:
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise TargetError(f"a segmentation target needs a [B, K, H, W] output, got {shape}")
        if not 0 <= self.category < output.shape[1]:
            raise TargetError(f"category {self.category} is out of range for {output.shape[1]} classes")
        mask = self.mask.to(device=output.device, dtype=output.dtype)
        if tuple(mask.shape[-2:]) != tuple(output.shape[-2:]):
            raise TargetError(
                f"the mask is {tuple(mask.shape[-2:])} but the output is {tuple(output.shape[-2:])} pixels"
            )
        if mask.ndim == 3 and mask.shape[0] != output.shape[0]:
            raise TargetError(f"{mask.shape[0]} masks for a batch of {output.shape[0]}")
        return (output[:, self.category] * mask).flatten(1).sum(1)

    def __repr__(self) -> str:
        return f"SegmentationTarget({self.category}, mask={tuple(self.mask.shape)})"


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """``[N, M]`` intersection over union of boxes ``(x0, y0, x1, y1)``."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp_min(0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp_min(0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp_min(1e-12)


class BoxTarget:
    """Detection outputs: the score of the best-matching predicted box for each reference box.

    The output is one detection set per image: a list of dicts ``{"boxes": [N, 4], "scores": [N],
    "labels": [N]}`` (torchvision's detection format; the keys are configurable), or a dict of
    batched tensors ``boxes [B, N, 4]``, ``scores [B, N]``, ``labels [B, N]``. For image ``b``
    and each reference box ``r`` with label ``l``, the match is the prediction with label ``l`` of
    highest IoU with ``r``; when that IoU is at least ``iou_threshold``, its score counts:

        ``y_b = Σ_r score[argmax_{n: label_n = l_r} IoU(r, box_n)] · 1[max IoU ≥ t]``

    Args:
        boxes: reference boxes ``[R, 4]`` for the whole batch or one ``[R_b, 4]`` per image.
        labels: their labels ``[R]`` (or one per image).
        iou_threshold: ``t`` (default 0.5).
    """

    def __init__(
        self,
        boxes: Tensor | Sequence[Tensor],
        labels: Tensor | Sequence[Tensor],
        iou_threshold: float = 0.5,
        keys: tuple[str, str, str] = ("boxes", "scores", "labels"),
    ) -> None:
        self.boxes = boxes
        self.labels = labels
        self.iou_threshold = float(iou_threshold)
        self.keys = keys

    def _reference(self, b: int, batch: int) -> tuple[Tensor, Tensor]:
        boxes, labels = self.boxes, self.labels
        if isinstance(boxes, Tensor) and boxes.ndim == 2:
            return boxes, torch.as_tensor(labels).flatten()
        if len(boxes) != batch or len(labels) != batch:
            raise TargetError(f"{len(boxes)} sets of reference boxes for a batch of {batch}")
        return torch.as_tensor(boxes[b]).view(-1, 4), torch.as_tensor(labels[b]).flatten()

    def __call__(self, output: object) -> Tensor:
        kb, ks, kl = self.keys
        if isinstance(output, dict):
            missing = [k for k in self.keys if k not in output]
            if missing:
                raise TargetError(f"the detection output has no {missing[0]!r} entry")
            per_image = [
                {kb: output[kb][i], ks: output[ks][i], kl: output[kl][i]} for i in range(len(output[kb]))
            ]
        elif isinstance(output, (list, tuple)) and all(isinstance(d, dict) for d in output):
            per_image = list(output)
        else:
            raise TargetError(
                "a box target needs a detection output: a list of {boxes, scores, labels} dicts or a dict of them"
            )
        scores = []
        for b, det in enumerate(per_image):
            ref_boxes, ref_labels = self._reference(b, len(per_image))
            pred_boxes, pred_scores, pred_labels = det[kb], det[ks], det[kl]
            total = pred_scores.sum() * 0  # keeps the graph and the dtype when nothing matches
            if pred_boxes.numel() and ref_boxes.numel():
                iou = box_iou(ref_boxes.to(pred_boxes), pred_boxes)  # [R, N]
                same = ref_labels.to(pred_labels.device)[:, None] == pred_labels[None, :]
                iou = torch.where(same, iou, torch.full_like(iou, -1.0))
                best_iou, best = iou.max(dim=1)
                hit = best_iou >= self.iou_threshold
                total = total + (pred_scores[best] * hit.to(pred_scores.dtype)).sum()
            scores.append(total)
        return torch.stack(scores)

    def __repr__(self) -> str:
        return f"BoxTarget(iou_threshold={self.iou_threshold})"


class OutputElement:
    """One element of a tuple, list or dict output (``output[key]``), scored by ``inner``.

    ``OutputElement("logits", 3)`` scores class 3 of ``output["logits"]``; ``OutputElement(0)``
    the predicted class of ``output[0]``. ``inner`` is anything :func:`as_target` accepts.
    Class indices (:func:`target_indices`) come from the inner target.
    """

    def __init__(self, key: int | str, inner: Callable[[Tensor], Tensor] | int | Sequence[int] | Tensor | None = None) -> None:
        self.key = key
        self.inner = as_target(inner)

    def select(self, output: object) -> Tensor:
        try:
            value = output[self.key]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            kind = type(output).__name__
            raise TargetError(f"the model output ({kind}) has no element {self.key!r}") from None
        return value  # type: ignore[no-any-return]

    def indices(self, output: object) -> Tensor | None:
        fn = getattr(self.inner, "indices", None)
        return fn(self.select(output)) if callable(fn) else None

    def __call__(self, output: object) -> Tensor:
        return self.inner(self.select(output))

    def __repr__(self) -> str:
        return f"OutputElement({self.key!r}, {self.inner!r})"
