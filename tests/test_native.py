"""Our safetensors model format: round trip, metadata checks, atomic writes, strict loading into modules."""

from __future__ import annotations

import json
import os
import struct

import rvc_mlx  # noqa: F401  (loads OpenBLAS before mlx.core)

# isort: split
import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from rvc_mlx.checkpoints.native import is_native, load_native, load_strict, save_native
from rvc_mlx.errors import CheckpointError


def test_round_trip_keeps_values_dtypes_and_meta(tmp_path, rng):
    arrays = {
        "a.weight": rng.standard_normal((3, 4)).astype(np.float32),
        "b.weight": rng.standard_normal((5,)).astype(np.float16),
        "c": mx.array(rng.standard_normal((2, 2, 2)).astype(np.float32)),
        "n": np.arange(6, dtype=np.int64).reshape(2, 3),
    }
    meta = {"sr": 40000, "version": "v2", "nested": {"f0": True}}
    path = tmp_path / "voice.safetensors"
    save_native(path, arrays, kind="voice", meta=meta)
    assert is_native(path)
    out, meta_out = load_native(path, "voice")
    assert meta_out == meta
    assert set(out) == set(arrays)
    assert out["a.weight"].dtype == mx.float32 and out["b.weight"].dtype == mx.float16
    assert out["n"].dtype == mx.int64
    for k, v in arrays.items():
        np.testing.assert_array_equal(np.array(out[k]), np.array(v))
    # readable by the reference safetensors package, with our metadata
    assert load_file(str(path))["b.weight"].dtype == np.float16
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        md = json.loads(f.read(n))["__metadata__"]
    assert md["format"] == "rvc-mlx" and md["format_version"] == "1" and md["kind"] == "voice"
    assert json.loads(md["meta"]) == meta
    # no temporary files left behind
    assert os.listdir(tmp_path) == ["voice.safetensors"]


def test_wrong_kind_foreign_and_corrupt_files(tmp_path):
    path = tmp_path / "h.safetensors"
    save_native(path, {"w": np.zeros(3, np.float32)}, kind="hubert", meta={})
    with pytest.raises(CheckpointError, match="this is a 'hubert' file, expected 'voice'"):
        load_native(path, "voice")
    assert load_native(path, None)[1] == {}

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(foreign))
    assert not is_native(foreign)
    with pytest.raises(CheckpointError, match="not an rvc-mlx model"):
        load_native(foreign, "voice")

    with pytest.raises(CheckpointError, match="file not found"):
        load_native(tmp_path / "missing.safetensors", "voice")
    assert not is_native(tmp_path / "missing.safetensors")

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01garbage")
    assert not is_native(junk)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_native(junk, "voice")

    # valid header, data cut off
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-4])
    assert is_native(cut)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_native(cut, "hubert")


def test_save_refuses_source_and_never_leaves_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "model.pth"
    path.write_bytes(b"original")
    with pytest.raises(CheckpointError, match="refusing to overwrite"):
        save_native(path, {"w": np.zeros(2, np.float32)}, kind="voice", meta={}, source=str(path))
    assert path.read_bytes() == b"original"

    out = tmp_path / "out.safetensors"
    save_native(out, {"w": np.ones(2, np.float32)}, kind="voice", meta={"v": 1})
    before = out.read_bytes()
    with pytest.raises(ValueError):  # meta not JSON-serialisable: fails before anything is written
        save_native(out, {"w": np.zeros(2, np.float32)}, kind="voice", meta={"x": object()})
    with pytest.raises(ValueError, match="cannot store"):
        save_native(out, {"w": np.array(["a", "b"])}, kind="voice", meta={})
    assert out.read_bytes() == before

    def crash(file, arrays, metadata=None):  # dies half way through writing the temporary file
        with open(file, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(mx, "save_safetensors", crash)
    with pytest.raises(OSError, match="disk full"):
        save_native(out, {"w": np.zeros(2, np.float32)}, kind="voice", meta={})
    assert out.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.pth", "out.safetensors"]


class _Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 3)
        self.blocks = [nn.Linear(3, 3, bias=False), nn.LayerNorm(3)]


def _weights(model: nn.Module, rng) -> dict[str, mx.array]:
    from mlx.utils import tree_flatten

    return {k: mx.array(rng.standard_normal(v.shape).astype(np.float32)) for k, v in
            tree_flatten(model.parameters())}


def test_load_strict_loads_and_casts(rng):
    model = _Small()
    w = _weights(model, rng)
    w16 = {k: v.astype(mx.float16) for k, v in w.items()}
    load_strict(model, w16, "x.safetensors")
    assert model.proj.weight.dtype == mx.float32
    for name, got in [("proj.weight", model.proj.weight), ("blocks.1.bias", model.blocks[1].bias)]:
        np.testing.assert_array_equal(np.array(got), np.array(w16[name].astype(mx.float32)))


def test_load_strict_reports_offending_keys(rng):
    model = _Small()
    w = _weights(model, rng)
    before = np.array(model.proj.weight)

    missing = {k: v for k, v in w.items() if k != "blocks.0.weight"}
    with pytest.raises(CheckpointError, match=r"missing weights: blocks\.0\.weight \(3, 3\)") as e:
        load_strict(model, missing, "voice.pth")
    assert e.value.path == "voice.pth"

    extra = dict(w, **{"proj.extra": mx.zeros((7,))})
    with pytest.raises(CheckpointError, match=r"unexpected weights: proj\.extra \(7,\)"):
        load_strict(model, extra, "voice.pth")

    bad = dict(w, **{"proj.weight": mx.zeros((4, 3))})
    msg = r"shape mismatch: proj\.weight \(4, 3\) \(model expects \(3, 4\)\)"
    with pytest.raises(CheckpointError, match=msg):
        load_strict(model, bad, "voice.pth")
    np.testing.assert_array_equal(np.array(model.proj.weight), before)  # nothing loaded on failure
