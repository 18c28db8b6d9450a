"""Targets: callables ``model_output -> scores[B]`` that say *what* is being explained.

Any callable with that contract works (a lambda, a similarity to a reference embedding, ...).
The classes here cover classifiers:

* :class:`Predicted` – the top-1 class of each sample (the default);
* :class:`ClassTarget` – given class indices, as a raw logit (default) or a softmax probability;
* :func:`Logit` / :func:`Probability` – shorthands for the two score kinds.

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
        return indices(output).detach()
    return None
