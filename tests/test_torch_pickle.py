"""torch_pickle.load against torch.load on real torch.save files (zip and legacy), and its refusals."""

from __future__ import annotations

import argparse
import collections
import dataclasses
import enum
import os
import pickle
import subprocess
import sys
import types
import zipfile

import numpy as np
import pytest
import torch

from rvc_mlx.checkpoints.torch_pickle import Placeholder, TorchDtype, load, to_plain
from rvc_mlx.errors import CheckpointError, UnsafePickleError

FORMATS = [pytest.param(True, id="zip"), pytest.param(False, id="legacy")]


def _save(obj, path, zip_format: bool):
    torch.save(obj, path, _use_new_zipfile_serialization=zip_format)
    return path


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


def _assert_same(ours, ref, where="root"):
    """Recursively compare our result with torch.load's: tensors by dtype, shape, strides, bytes."""
    if isinstance(ref, torch.Tensor):
        exp = _as_numpy(ref)
        assert isinstance(ours, np.ndarray), where
        assert ours.dtype == exp.dtype and ours.shape == exp.shape, (where, ours.dtype, exp.dtype)
        assert ours.strides == tuple(s * ours.itemsize for s in ref.stride()), where
        np.testing.assert_array_equal(ours, exp, err_msg=where)
        if ref.dtype in (torch.float16, torch.float32, torch.float64, torch.bfloat16):
            # bit-exact (also -0.0, inf, nan payloads)
            assert np.array_equal(ours.view(f"u{ours.itemsize}"), exp.view(f"u{exp.itemsize}")), where
    elif isinstance(ref, dict):
        assert type(ours) is type(ref) and list(ours) == list(ref), where
        for k in ref:
            _assert_same(ours[k], ref[k], f"{where}.{k}")
    elif isinstance(ref, list | tuple):
        assert type(ours) is type(ref) and len(ours) == len(ref), where
        for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
            _assert_same(a, b, f"{where}[{i}]")
    elif isinstance(ref, np.ndarray):
        assert ours.dtype == ref.dtype
        np.testing.assert_array_equal(ours, ref)
    else:
        assert ours == ref and type(ours) is type(ref), (where, ours, ref)


def _dtype_tensors(g: torch.Generator) -> dict[str, torch.Tensor]:
    x = torch.randn(3, 5, generator=g)
    x[0, 0], x[0, 1], x[0, 2] = -0.0, float("inf"), float("nan")
    return {
        "f16": x.half(), "f32": x.clone(), "f64": x.double(), "bf16": x.bfloat16(),
        "i8": torch.randint(-128, 128, (7,), dtype=torch.int8, generator=g),
        "i16": torch.randint(-(2**15), 2**15, (2, 3), dtype=torch.int16, generator=g),
        "i32": torch.randint(-(2**31), 2**31 - 1, (4,), dtype=torch.int32, generator=g),
        "i64": torch.tensor([-(2**62), 2**62, 0, -1]),
        "u8": torch.randint(0, 256, (5,), dtype=torch.uint8, generator=g),
        "bool": torch.tensor([[True, False], [False, True]]),
        "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4),
    }


@pytest.mark.parametrize("zip_format", FORMATS)
def test_every_dtype_matches_torch_load(tmp_path, zip_format):
    tensors = _dtype_tensors(torch.Generator().manual_seed(0))
    if zip_format:  # torch itself cannot read these back from a legacy file
        tensors["u16"] = torch.tensor([0, 1, 65535], dtype=torch.uint16)
        tensors["c64"] = torch.randn(3, dtype=torch.complex64)
    path = _save(tensors, tmp_path / "t.pt", zip_format)
    ours = load(path)
    _assert_same(ours, torch.load(path, weights_only=False))
    assert ours["bf16"].dtype == np.float32 and ours["f16"].dtype == np.float16


@pytest.mark.parametrize("zip_format", FORMATS)
def test_views_shared_storage_offsets_and_nesting(tmp_path, zip_format):
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    half = torch.randn(4, 6).half()
    obj = {
        "base": base, "transposed": base.t(), "slice": base[2:5, 3:9:2], "row": base[4],
        "narrow": base.view(-1)[17:29].view(3, 4), "expanded": base[0:1].expand(3, 10),
        "half_t": half.t(), "half_col": half[:, 1],
        "nested": {"list": [base[1], (half[2:], {"deep": base[5, 2:]})], "n": 3, "s": "x", "none": None},
        "param": torch.nn.Parameter(torch.randn(2, 3)), "size": torch.Size([2, 3]),
        "od": collections.OrderedDict([("b", 1), ("a", torch.ones(2))]),
        "bytes": b"\x00\x80\xff", "np_array": np.arange(6, dtype=np.int16).reshape(2, 3),
        "np_scalar": np.float32(1.5), "float": 0.25, "tuple": (1, "2", 3.0), "set": {1, 2},
    }
    path = _save(obj, tmp_path / "v.pt", zip_format)
    ours = load(path)
    ref = torch.load(path, weights_only=False)
    for k in ("param", "size", "od"):  # types torch gives back that we map to plain ones
        ref[k] = {"param": lambda t: t.detach(), "size": tuple, "od": lambda d: d}[k](ref[k])
    _assert_same(ours, ref)
    # tensors of one storage share memory, at their storage offsets
    assert np.shares_memory(ours["base"], ours["slice"]) and np.shares_memory(ours["base"], ours["narrow"])
    assert np.shares_memory(ours["half_t"], ours["half_col"])
    ours["base"][2, 3] = -1.0
    assert ours["slice"][0, 0] == -1.0 and ours["transposed"][3, 2] == -1.0
    assert ours["expanded"].strides[0] == 0
    assert isinstance(ours["od"], collections.OrderedDict) and type(ours["np_scalar"]) is np.float32


@pytest.mark.parametrize("zip_format", FORMATS)
def test_rvc_voice_checkpoint(tmp_path, zip_format):
    g = torch.Generator().manual_seed(1)
    weight = {
        "enc_p.emb_phone.weight": torch.randn(192, 768, generator=g).half(),
        "enc_p.emb_pitch.weight": torch.randn(256, 192, generator=g).half(),
        "dec.conv_pre.weight": torch.randn(512, 192, 7, generator=g).half(),
        "emb_g.weight": torch.randn(1, 256, generator=g).half(),
    }
    config = [1025, 32, 192, 192, 768, 2, 6, 3, 0, "1", [3, 7, 11], [[1, 3, 5]] * 3, [10, 10, 2, 2], 512,
              [16, 16, 4, 4], 109, 40000]
    ckpt = {"weight": weight, "config": config, "f0": 1, "version": "v2", "sr": "40k", "info": "300epoch"}
    path = _save(ckpt, tmp_path / "voice.pth", zip_format)
    ours = load(path)
    _assert_same(ours, torch.load(path, weights_only=False))
    assert ours["weight"]["dec.conv_pre.weight"].dtype == np.float16


# ---- plain data objects that checkpoints carry -------------------------------------------------------------
_FAIRSEQ = "fairseq.dataclass.configs"  # fairseq is not installed: the test classes pose as its dataclasses


class Activation(enum.Enum):
    GELU = "gelu"
    RELU = "relu"


@dataclasses.dataclass
class ModelConfig:
    encoder_layers: int
    activation: Activation
    extractor_mode: str


Activation.__module__ = ModelConfig.__module__ = _FAIRSEQ


@pytest.mark.parametrize("zip_format", FORMATS)
def test_config_objects_become_placeholders(tmp_path, zip_format, monkeypatch):
    from omegaconf import OmegaConf

    for name in ("fairseq", "fairseq.dataclass", _FAIRSEQ):  # only so that torch.save can name the classes
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules[_FAIRSEQ].Activation, sys.modules[_FAIRSEQ].ModelConfig = Activation, ModelConfig

    cfg = OmegaConf.create({"model": {"layers": 12, "dims": [768, 3072], "name": "hubert", "dropout": 0.1,
                                      "flag": True, "missing": "???", "nothing": None},
                            "task": {"sample_rate": 16000, "labels": ["km"]}})
    ns = argparse.Namespace(sample_rate=16000, arch="hubert_base", layers=[1, 2])
    dc = ModelConfig(encoder_layers=12, activation=Activation.GELU, extractor_mode="default")
    state = {"w": torch.randn(3, 2)}
    path = _save({"cfg": cfg, "args": ns, "dc": dc, "model": state}, tmp_path / "h.pt", zip_format)
    ours = load(path)

    _assert_same(ours["model"], torch.load(path, weights_only=False)["model"])
    assert isinstance(ours["cfg"], Placeholder) and ours["cfg"].qualname == "omegaconf.dictconfig.DictConfig"
    assert to_plain(ours["cfg"]) == OmegaConf.to_container(cfg)
    assert isinstance(ours["args"], Placeholder) and ours["args"].qualname == "argparse.Namespace"
    assert to_plain(ours["args"]) == vars(ns)
    assert ours["dc"].qualname == "fairseq.dataclass.configs.ModelConfig"
    assert ours["dc"].state["encoder_layers"] == 12
    assert to_plain(ours["dc"]) == {"encoder_layers": 12, "activation": "gelu", "extractor_mode": "default"}


# ---- refusals --------------------------------------------------------------------------------------------
class _Evil:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _evil_payloads(marker: str) -> dict[str, tuple[_Evil, str]]:
    return {
        "os.system": (_Evil(os.system, f"touch {marker}"), r"(os|posix)\.system"),
        "eval": (_Evil(eval, f"open({marker!r}, 'w')"), r"builtins\.eval"),
        "popen": (_Evil(subprocess.Popen, ["touch", marker]), r"subprocess\.Popen"),
        "unlisted": (_Evil(collections.namedtuple, "T", "a"), r"refusing to call collections\.namedtuple"),
    }


@pytest.mark.parametrize("how", ["zip", "legacy", "pickle", "pickle0"])
def test_malicious_globals_are_refused_and_never_run(tmp_path, how):
    marker = str(tmp_path / "pwned")
    for name, (evil, pattern) in _evil_payloads(marker).items():
        path = tmp_path / f"{name}.{how}"
        obj = {"weight": {"w": torch.zeros(2)}, "x": [1, evil]}
        if how in ("zip", "legacy"):
            _save(obj, path, how == "zip")
        else:
            path.write_bytes(pickle.dumps([1, evil], protocol=0 if how == "pickle0" else 2))
        with pytest.raises(UnsafePickleError, match=pattern) as e:
            load(path)
        assert e.value.path == str(path), name
        assert not os.path.exists(marker), name


class _PlainObject:  # a class outside the known namespaces, pickled by NEWOBJ + BUILD: tolerated as data
    def __init__(self):
        self.rate, self.names = 16000, ["a"]


def test_unknown_plain_object_is_inert_but_calls_are_refused(tmp_path):
    path = tmp_path / "obj.pkl"
    path.write_bytes(pickle.dumps({"o": _PlainObject()}, protocol=2))
    out = load(path)["o"]
    assert isinstance(out, Placeholder) and out.qualname.endswith("._PlainObject")
    assert to_plain(out) == {"rate": 16000, "names": ["a"]}
    # the same class called through REDUCE (it could be any function) is refused
    path.write_bytes(pickle.dumps(_Evil(_PlainObject), protocol=2))
    with pytest.raises(UnsafePickleError, match=r"refusing to call .*_PlainObject"):
        load(path)


def test_build_cannot_tamper_with_the_loader(tmp_path):
    """BUILD on a dtype copy changes nothing shared; BUILD on an allow-listed callable is refused."""
    tampered = tmp_path / "tampered.pkl"
    # GLOBAL torch.float32, then BUILD with {"numpy": "<f2", "itemsize": 2}
    tampered.write_bytes(b"\x80\x02ctorch\nfloat32\n}(X\x05\x00\x00\x00numpyX\x03\x00\x00\x00<f2"
                         b"X\x08\x00\x00\x00itemsizeK\x02ub.")
    assert load(tampered).numpy == "<f2"
    path = _save({"w": torch.randn(2, 3)}, tmp_path / "after.pt", True)
    _assert_same(load(path), torch.load(path, weights_only=False))  # still read as float32
    build_on_callable = tmp_path / "build.pkl"
    build_on_callable.write_bytes(b"\x80\x02ccollections\nOrderedDict\n}X\x01\x00\x00\x00aK\x01sb.")
    with pytest.raises(UnsafePickleError, match="refusing to modify collections.OrderedDict"):
        load(build_on_callable)


def _rewrite_zip(src, dst, drop=(), replace=None):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            if info.filename.endswith(drop) and drop:
                continue
            data = zin.read(info.filename)
            edit = (replace or {}).get(info.filename.split("/", 1)[1], lambda d: d)
            zout.writestr(info.filename, edit(data))


def test_big_endian_zip_matches_torch_load(tmp_path):
    obj = {"a": torch.randn(3, 4).t(), "h": torch.randn(5).half(), "i": torch.arange(4)}
    src = _save(obj, tmp_path / "le.pt", True)
    dtypes = {"0": "<f4", "1": "<f2", "2": "<i8"}
    swap = {f"data/{k}": (lambda d, t=t: np.frombuffer(d, t).byteswap().tobytes()) for k, t in dtypes.items()}
    swap["byteorder"] = lambda d: b"big"
    _rewrite_zip(src, tmp_path / "be.pt", replace=swap)
    ref = torch.load(tmp_path / "be.pt", weights_only=False)
    _assert_same(load(tmp_path / "be.pt"), ref)
    _assert_same(load(tmp_path / "be.pt"), torch.load(src, weights_only=False))


def test_bad_files_raise_checkpoint_error(tmp_path):
    good_zip = _save({"a": torch.randn(1000), "b": torch.ones(3)}, tmp_path / "good.pt", True)
    good_legacy = _save({"a": torch.randn(1000), "b": torch.ones(3)}, tmp_path / "good_legacy.pt", False)
    zip_bytes, legacy_bytes = good_zip.read_bytes(), good_legacy.read_bytes()

    def check(data: bytes | None, pattern: str, name: str):
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        with pytest.raises(CheckpointError, match=pattern) as e:
            load(path)
        assert not isinstance(e.value, UnsafePickleError)
        assert e.value.path == str(path)

    check(None, "file not found", "missing.pt")
    check(b"", "file is empty", "empty.pt")
    check(zip_bytes[: len(zip_bytes) // 2], "damaged or truncated zip", "cut.pt")
    check(legacy_bytes[:-100], "truncated in storage", "cut_legacy.pt")
    check(legacy_bytes[:300], "truncated|ends early", "cut_legacy_pickle.pt")
    check(b"this is a text file, not a checkpoint\n" * 3, "not a PyTorch checkpoint", "text.pt")
    check(b"\x80\x09junk", "not a PyTorch checkpoint", "protocol.pt")
    check(os.urandom(64), "not a PyTorch checkpoint|malformed|truncated", "random.pt")
    with zipfile.ZipFile(tmp_path / "nopkl.zip", "w") as z:
        z.writestr("archive/readme.txt", "hello")
    check(None, "without a data.pkl", "nopkl.zip")
    _rewrite_zip(good_zip, tmp_path / "nostorage.pt", drop=("data/1",))
    check(None, r"storage record 'good/data/1' is missing", "nostorage.pt")
    _rewrite_zip(good_zip, tmp_path / "short.pt", replace={"data/0": lambda d: d[:100]})
    check(None, r"holds 100 bytes, 4000 expected", "short.pt")
    os.mkdir(tmp_path / "dir.pt")
    check(None, "is a directory", "dir.pt")


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_pickles_every_protocol(tmp_path, protocol):
    obj = {"ns": argparse.Namespace(a=1, b=[2]), "od": collections.OrderedDict(x=1), "s": {1, 2},
           "dd": collections.defaultdict(list, {"k": [1]}), "fs": frozenset([3]), "by": b"ab",
           "ba": bytearray(b"cd"), "c": 1 + 2j, "arr": np.arange(6.0).reshape(2, 3).T, "dt": np.dtype(">i4"),
           "sc": np.int16(-3)}
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    out = load(path)
    assert to_plain(out.pop("ns")) == {"a": 1, "b": [2]}
    del obj["ns"]
    _assert_same(out, obj)
    assert out["dd"]["missing"] == [] and out["arr"].flags.f_contiguous


def test_numpy1_names(tmp_path):
    """Pickles written under numpy 1 name `numpy.core.multiarray`; numpy 2 writes `numpy._core`."""
    obj = {"a": np.arange(4, dtype=np.float32), "s": np.float64(2.5), "o": np.array([1, "x"], dtype=object)}
    data = pickle.dumps(obj, protocol=2)
    old = data.replace(b"numpy._core", b"numpy.core")
    assert old != data
    path = tmp_path / "np1.pkl"
    path.write_bytes(old)
    _assert_same(load(path), pickle.loads(old))


def test_dtype_objects(tmp_path):
    _save({"d": torch.bfloat16, "e": torch.int64}, tmp_path / "d.pt", True)
    out = load(tmp_path / "d.pt")
    assert out["d"] == TorchDtype("bfloat16", "<u2", 2) and out["e"].name == "int64"


def test_loading_does_not_import_torch(tmp_path):
    path = _save({"w": torch.randn(4, 4).half(), "cfg": argparse.Namespace(a=1)}, tmp_path / "m.pth", True)
    code = ("import sys; from rvc_mlx.checkpoints.torch_pickle import load, to_plain; d = load(sys.argv[1]); "
            "assert d['w'].shape == (4, 4) and to_plain(d['cfg']) == {'a': 1}; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
