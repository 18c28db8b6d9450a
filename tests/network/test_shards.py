"""Shards: map encodings against their formulas, round trips of real photos and maps, the validator."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from featurelens.errors import BundleError
from featurelens.network.shards import (
    ImageRecord,
    ShardStore,
    decode_map,
    encode_display_image,
    encode_map,
    validate_shards,
    write_shard,
)


def _maps(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "_blocks.15": rng.gamma(2.0, 3.0, size=(5, 7, 7)).astype(np.float32),   # 5 cluster maps, 7×7
        "_conv_head": rng.random((3, 7, 7), dtype=np.float32),
        "raw sum": (rng.standard_normal((14, 14)) * 2e5).astype(np.float32),  # beyond float16's range
    }


@pytest.fixture()
def records(photos):
    return [ImageRecord(name, {"predicted": name, "score": 0.5 + i / 10, "clusters": [[0, 1], [2]]},
                        _maps(i), im) for i, (name, im) in enumerate(photos.items())]


def test_float16_encoding_matches_its_formula():
    rng = np.random.default_rng(1)
    m = (rng.standard_normal((2, 3, 6, 5)) * np.array([1e-3, 1.0, 300.0])[None, :, None, None]).astype(np.float32)
    m[1, 2] = 0.0
    parts = encode_map(m, "float16")
    # the slow formula: per 2-D map, s = 2**ceil(log2(max|m|)), q = float16(m / s)
    for a in range(2):
        for b in range(3):
            peak = float(np.abs(m[a, b]).max())
            s = 2.0 ** np.ceil(np.log2(peak)) if peak > 0 else 1.0
            assert parts["scale"][a, b] == s
            np.testing.assert_array_equal(parts["q"][a, b], (m[a, b] / s).astype(np.float16))
    out = decode_map(parts, "float16")
    assert out.dtype == np.float32 and out.shape == m.shape
    normal = (np.abs(m) >= 2.0**-14) & (np.abs(m / parts["scale"][..., None, None]) >= 2.0**-14)
    np.testing.assert_array_equal(out[normal], m.astype(np.float16).astype(np.float32)[normal])  # = float16(m)
    np.testing.assert_allclose(out, m, rtol=2.0**-11, atol=1e-7)
    big = np.full((2, 2), 1e7, np.float32)
    np.testing.assert_allclose(decode_map(encode_map(big), "float16"), big, rtol=2.0**-11)  # no overflow to inf


def test_uint8_encoding_matches_its_formula():
    rng = np.random.default_rng(2)
    m = rng.standard_normal((4, 9, 9)).astype(np.float32) * 3 + 1
    m[3] = 2.5  # constant map
    parts = encode_map(m, "uint8")
    for k in range(4):
        lo, hi = float(m[k].min()), float(m[k].max())
        span = hi - lo if hi > lo else 1.0
        ref = np.clip(np.rint((m[k] - lo) / span * 255), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(parts["q"][k], ref)
    out = decode_map(parts, "uint8")
    for k in range(4):
        span = float(m[k].max() - m[k].min())
        assert np.abs(out[k] - m[k]).max() <= span / 510 + 1e-5
    np.testing.assert_array_equal(out[3], m[3])
    with pytest.raises(BundleError, match="NaN"):
        encode_map(np.full((2, 2), np.nan))
    with pytest.raises(BundleError, match="at least 2 dimensions"):
        encode_map(np.ones(3))


@pytest.mark.parametrize("encoding", ["float16", "uint8"])
def test_round_trip_of_real_photos_and_maps(tmp_path, records, encoding):
    info = write_shard(tmp_path, "b0", records[:3], encoding=encoding, display_size=128)
    write_shard(tmp_path, "b1", records[3:], encoding=encoding, display_size=128)
    assert info.ids == ("coffee", "chelsea", "astronaut")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b0.json", "b0.npz", "b1.json", "b1.npz"]
    store = ShardStore(tmp_path)
    assert store.keys() == ["b0", "b1"]
    assert store.done_ids() == {"coffee", "chelsea", "astronaut", "rocket"}
    got = {r.image_id: r for r in store}
    for rec in records:
        back = got[rec.image_id]
        assert back.meta == rec.meta
        assert list(back.maps) == list(rec.maps)
        for name, m in rec.maps.items():
            assert back.maps[name].shape == m.shape and back.maps[name].dtype == np.float32
            if encoding == "float16":
                np.testing.assert_allclose(back.maps[name], m, rtol=2.0**-11, atol=0)  # float16 precision
            else:
                span = (m.max(axis=(-2, -1)) - m.min(axis=(-2, -1)))[..., None, None]
                assert np.all(np.abs(back.maps[name] - m) <= span / 510 * (1 + 1e-5) + 1e-6)
        # the display image: stored once, downscaled, the same picture
        im = back.display_image()
        w, h = rec.image.size
        assert max(im.size) == 128 and abs(im.size[0] / im.size[1] - w / h) < 0.02
        small = np.asarray(rec.image.resize(im.size, Image.Resampling.LANCZOS), np.float32)
        assert np.abs(np.asarray(im, np.float32) - small).mean() < 6  # JPEG at quality 88
    assert store.read("rocket").meta["predicted"] == "rocket"
    with pytest.raises(BundleError, match="no image 'nope'"):
        store.read("nope")
    assert validate_shards(tmp_path) == []


def test_rewriting_a_key_replaces_the_shard_and_sizes_are_compact(tmp_path, records):
    write_shard(tmp_path, "k", records[:2])
    write_shard(tmp_path, "k", records[:2])  # a retried batch: same files, not a second copy
    assert ShardStore(tmp_path).done_ids() == {"coffee", "chelsea"}
    assert validate_shards(tmp_path) == []
    assert not list(tmp_path.glob(".*.tmp"))
    jpeg = encode_display_image(records[2].image, 256)
    assert Image.open(io.BytesIO(jpeg)).size == (256, 256) and len(jpeg) < 40_000
    tiny = Image.new("RGB", (20, 10), (9, 9, 9))
    assert Image.open(io.BytesIO(encode_display_image(tiny, 256))).size == (20, 10)  # never enlarged


def test_validator_finds_broken_shards(tmp_path, records):
    write_shard(tmp_path, "a", records[:2])
    write_shard(tmp_path, "b", records[2:])
    assert validate_shards(tmp_path) == []
    # 1. the same id in two shards
    write_shard(tmp_path, "c", records[:1])
    assert any("'coffee' is stored twice" in p for p in validate_shards(tmp_path))
    with pytest.raises(BundleError, match="'coffee' is in shards a and c"):
        ShardStore(tmp_path).done_ids()
    (tmp_path / "c.json").unlink()
    # 2. an incomplete shard (npz without its index) and a temporary file
    (tmp_path / ".x.npz.123.tmp").write_bytes(b"half")
    probs = validate_shards(tmp_path)
    assert sorted(p.split(":")[0] for p in probs) == [".x.npz.123.tmp", "c.npz"]
    assert ShardStore(tmp_path).done_ids() == {"coffee", "chelsea", "astronaut", "rocket"}
    assert {p.name for p in ShardStore(tmp_path).remove_incomplete()} == {".x.npz.123.tmp", "c.npz"}
    assert validate_shards(tmp_path) == []
    # 3. a changed npz
    data = bytearray((tmp_path / "b.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "b.npz").write_bytes(bytes(data))
    assert validate_shards(tmp_path) == ["b.npz: size or checksum differs from its index (changed or truncated)"]
    write_shard(tmp_path, "b", records[2:])
    # 4. an index whose shapes or arrays do not match the npz
    idx = json.loads((tmp_path / "a.json").read_text())
    idx["images"][0]["maps"]["_conv_head"]["shape"] = [3, 7, 8]
    (tmp_path / "a.json").write_text(json.dumps(idx))
    assert any("array m0_1_q is float16[3, 7, 7], the index says float16[3, 7, 8]" in p for p in validate_shards(tmp_path))
    idx["images"][0]["maps"]["_conv_head"]["shape"] = [3, 7, 7]
    idx["images"][0]["maps"]["extra"] = {"key": "m0_9", "shape": [2, 2]}
    (tmp_path / "a.json").write_text(json.dumps(idx))
    assert "a.npz: array m0_9_q named by the index is missing" in validate_shards(tmp_path)
    idx["images"][0]["maps"].pop("extra")
    idx["version"] = 99
    (tmp_path / "a.json").write_text(json.dumps(idx))
    assert any("shard version 99" in p for p in validate_shards(tmp_path))
    with pytest.raises(BundleError, match="key"):
        write_shard(tmp_path, "../evil", records[:1])
    with pytest.raises(BundleError, match="twice"):
        write_shard(tmp_path, "d", [records[0], records[0]])
