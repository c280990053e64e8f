"""Read PyTorch `.pth`/`.pt` files without torch, through a restricted unpickler.

`load(path)` returns the pickled object with every tensor as a numpy array (its dtype, shape, strides and
storage offset; tensors sharing a storage share memory; bfloat16 comes back as float32, bit-exact). Both torch
layouts are read: the zip archive (torch >= 1.6: ``<root>/data.pkl``, raw storages in ``<root>/data/<key>``,
``<root>/byteorder``) and the legacy stream (magic number, protocol version, sys info, the pickle, the storage
keys, then each storage as an int64 element count followed by its bytes).

Safety: only an allow-list of callables (tensor and storage rebuilders, OrderedDict, the numpy array
rebuilders, ...) is ever called. Classes of plain data objects that checkpoints carry (omegaconf configs,
fairseq dataclasses, argparse.Namespace, enums, typing names) become inert `Placeholder` objects that only
record their constructor arguments and pickled state; `to_plain` turns them into dicts, lists and values.
A known-dangerous global (os.system, builtins.eval, subprocess.Popen, ...) or a call to any global outside
the allow-list raises UnsafePickleError before anything runs.
"""

from __future__ import annotations

import _compat_pickle
import collections
import dataclasses
import datetime
import io
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass

import numpy as np

from rvc_mlx.errors import CheckpointError, UnsafePickleError

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # first object of a legacy torch.save stream
_LEGACY_PROTOCOL = 1001  # second object of a legacy stream


@dataclass(frozen=True)
class TorchDtype:
    """A torch dtype named in a pickle (e.g. ``torch.float16``)."""

    name: str  # torch's canonical name, e.g. "float16", "bfloat16"
    numpy: str  # numpy dtype the array is stored as in memory, e.g. "<f2" ("<u2" for bfloat16)
    itemsize: int  # bytes per element in the file


# name, numpy layout in memory ("<u2": bfloat16 bits), bytes per element in the file
_DTYPES = {n: TorchDtype(n, layout, int(size)) for n, layout, size in (spec.split(":") for spec in """
    float16:<f2:2 float32:<f4:4 float64:<f8:8 bfloat16:<u2:2 complex64:<c8:8 complex128:<c16:16
    int8:i1:1 int16:<i2:2 int32:<i4:4 int64:<i8:8 uint8:u1:1 uint16:<u2:2 uint32:<u4:4 uint64:<u8:8
    bool:?:1""".split())}
_DTYPES.update({alias: _DTYPES[n] for alias, n in (spec.split(":") for spec in """half:float16 float:float32
    double:float64 cfloat:complex64 cdouble:complex128 short:int16 int:int32 long:int64""".split())})
_STORAGE_DTYPES = {  # torch.<Name>Storage -> element dtype
    "HalfStorage": "float16", "FloatStorage": "float32", "DoubleStorage": "float64",
    "BFloat16Storage": "bfloat16", "ComplexFloatStorage": "complex64", "ComplexDoubleStorage": "complex128",
    "CharStorage": "int8",
    "ShortStorage": "int16", "IntStorage": "int32", "LongStorage": "int64", "ByteStorage": "uint8",
    "BoolStorage": "bool", "UntypedStorage": "uint8",
}

# Modules (and their submodules) whose globals are refused outright, even as plain references.
_DENIED_MODULES = frozenset("""
    os posix nt posixpath ntpath subprocess sys shutil socket importlib runpy pty code codeop ctypes
    multiprocessing webbrowser pickle _pickle cPickle marshal types functools operator _operator io _io
    tempfile signal platform pdb bdb timeit asyncio threading _thread inspect gc zipimport pip setuptools
    distutils urllib http ftplib smtplib telnetlib commands popen2 sqlite3 shelve dbm glob fileinput tarfile
    zipfile compileall py_compile site sysconfig ensurepip venv pydoc cProfile profile trace idlelib xmlrpc
    imp ast dis linecache mmap resource fcntl select selectors _posixsubprocess nturl2path ctypes
""".split())
_DENIED_NAMES = frozenset({"torch.load", "torch.hub", "torch.jit", "torch.package", "torch._C", "torch.ops",
                           "torch.compile", "torch.classes", "numpy.load", "numpy.testing", "numpy.f2py",
                           "numpy.distutils", "numpy.ctypeslib", "numpy.lib.npyio", "numpy.fromfile"})
# Harmless builtins a pickle may name (types of plain data); every other builtin is refused.
_SAFE_BUILTINS = {t.__name__: t for t in (set, frozenset, complex, bytearray, bytes, slice, range, list, dict,
                                          tuple, int, float, str, bool, object)}
# Packages whose classes are plain data holders: calling one (REDUCE, e.g. an enum) builds a Placeholder.
_DATA_NAMESPACES = ("omegaconf", "fairseq", "argparse", "typing", "enum", "pathlib", "torch.nn.modules")


class _Refused(Exception):
    """Raised inside the unpickler; `load` turns it into UnsafePickleError with the file path."""


class Placeholder:
    """An inert stand-in for an object of a class that is never imported.

    It records what the pickle gave it: `args`/`kwargs` (constructor arguments), `state` (the BUILD state,
    e.g. an instance __dict__), `items` (dict entries set by SETITEMS) and `list_items` (APPENDS). Nothing
    of the original class runs. `module`, `name` and `qualname` say which class it stands for.
    """

    module = ""  # set on each generated subclass
    name = ""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.__dict__.update(args=args, kwargs=kwargs, state=None, items={}, list_items=[])
        return obj

    def __setstate__(self, state):
        self.__dict__["state"] = state

    def __setitem__(self, key, value):
        self.__dict__["items"][key] = value

    def append(self, value):
        self.__dict__["list_items"].append(value)

    def extend(self, values):
        self.__dict__["list_items"].extend(values)

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"

    def __repr__(self) -> str:
        return f"<Placeholder {self.qualname} args={self.args!r} state={type(self.state).__name__}>"


class _PlaceholderMeta(type):
    """Calling a placeholder class (pickle REDUCE) is allowed only for the data-class namespaces."""

    def __call__(cls, *args, **kwargs):
        if not cls._callable:
            raise _Refused(f"refusing to call {cls.module}.{cls.name} (not on the allow-list)")
        return cls.__new__(cls, *args, **kwargs)


class _Safe:
    """An allow-listed callable as handed to the pickle: it can be called, never modified by BUILD."""

    __slots__ = ("_fn", "_qualname")

    def __init__(self, fn, qualname: str):
        self._fn, self._qualname = fn, qualname

    def __call__(self, *args, **kwargs):
        return self._fn(*args, **kwargs)

    def __setstate__(self, state):
        raise _Refused(f"refusing to modify {self._qualname}")


class _Storage:
    """A torch storage: its bytes and the dtype it was saved with (views per dtype are cached)."""

    __slots__ = ("raw", "dtype", "big_endian", "views")

    def __init__(self, raw: np.ndarray | None, dtype: TorchDtype, big_endian: bool):
        self.raw = raw  # uint8 bytes, None while scanning a legacy file
        self.dtype = dtype  # element type the storage was saved as
        self.big_endian = big_endian  # byte order of the file
        self.views: dict[str, np.ndarray] = {}  # dtype name -> 1-D elements, native order (bfloat16: float32)

    def __setstate__(self, state):
        raise _Refused("refusing to modify a tensor storage")

    def elements(self, dtype: TorchDtype, path: str) -> np.ndarray:
        if dtype.name not in self.views:
            raw = self.raw
            if raw.size % dtype.itemsize:
                raise CheckpointError(path, f"a {raw.size}-byte storage cannot hold {dtype.name} elements")
            file_dtype = np.dtype(dtype.numpy).newbyteorder(">" if self.big_endian else "<")
            arr = raw.view(file_dtype)
            if self.big_endian and dtype.itemsize > 1:
                arr = arr.astype(file_dtype.newbyteorder("="))
            if dtype.name == "bfloat16":  # bf16 is the top half of a float32: widen bit-exactly
                arr = (arr.astype(np.uint32) << 16).view(np.float32)
            self.views[dtype.name] = arr
        return self.views[dtype.name]


def _canonical(dtype) -> TorchDtype | None:
    """Our own record of a dtype the pickle handed back (its copy's fields are never trusted)."""
    return _DTYPES.get(dtype.name) if isinstance(dtype, TorchDtype) and isinstance(dtype.name, str) else None


# numpy's pickle rebuilders, under the numpy 1 (`numpy.core`) and numpy 2 (`numpy._core`) names
_NUMPY_CALLABLES = {
    f"{core}.{name}": fn
    for core in ("numpy.core", "numpy._core")
    for name, fn in [("multiarray._reconstruct", np.zeros(1).__reduce__()[0]),
                     ("multiarray.scalar", np.float64(0).__reduce__()[0]),
                     ("numeric._frombuffer", np.zeros(1).__reduce_ex__(5)[0])]
}


class _Unpickler(pickle.Unpickler):
    """Restricted unpickler; `storage_loader(key, dtype, numel)` gives a storage's bytes (None: scan only)."""

    def __init__(self, file, path: str, storage_loader=None, big_endian: bool = False):
        super().__init__(file, encoding="utf-8")
        self._path = path
        self._storage_loader = storage_loader
        self._big_endian = big_endian
        self._storages: dict[str, _Storage] = {}
        self.storage_dtypes: dict[str, TorchDtype] = {}  # key -> dtype, filled as persistent ids are seen
        self._classes: dict[str, type] = {}
        u = "torch._utils."
        self._callables = {
            # (storage, offset, size, stride[, requires_grad, hooks[, dtype (v3)], metadata])
            u + "_rebuild_tensor": self._tensor,
            u + "_rebuild_tensor_v2": lambda st, off, size, stride, *_: self._tensor(st, off, size, stride),
            u + "_rebuild_tensor_v3": lambda st, off, size, stride, _g, _h, dt, *_:
                self._tensor(st, off, size, stride, dt),
            u + "_rebuild_parameter": lambda data, *_: data,  # (data, requires_grad, hooks)
            u + "_rebuild_parameter_with_state": lambda data, *_: data,
            u + "_rebuild_device_tensor_from_numpy": lambda data, *_: data,  # (array, dtype, device, grad)
            "torch._tensor._rebuild_from_type": self._rebuild_from_type,
            "torch._tensor._rebuild_from_type_v2": self._rebuild_from_type,
            "torch.Size": lambda dims=(): tuple(dims),
            "torch.device": lambda *args: ":".join(str(a) for a in args),
            "collections.OrderedDict": collections.OrderedDict,
            "collections.defaultdict": self._defaultdict,
            "_codecs.encode": self._codecs_encode,
            "copyreg._reconstructor": self._reconstructor,
            **_NUMPY_CALLABLES,
            **{f"datetime.{n}": getattr(datetime, n) for n in ("datetime", "date", "time", "timedelta")},
        }

    # ---- globals ----------------------------------------------------------------------------------------
    def find_class(self, module: str, name: str):
        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names, as protocols 0-2 write them
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        qualname = f"{module}.{name}"
        top = module.split(".")[0]
        if module == "builtins":
            if name in _SAFE_BUILTINS:
                return _SAFE_BUILTINS[name]
            raise _Refused(f"refusing to call {qualname} (a checkpoint may not run code)")
        if top in _DENIED_MODULES or any(qualname.startswith(d) for d in _DENIED_NAMES):
            raise _Refused(f"refusing to call {qualname} (a checkpoint may not run code)")
        if qualname in self._callables:
            return _Safe(self._callables[qualname], qualname)
        if qualname == "numpy.ndarray":
            return np.ndarray
        if qualname == "numpy.dtype":
            return np.dtype
        # dtypes are handed out as copies, so that a BUILD on one cannot alter the shared table
        if module in ("torch", "torch.cuda", "torch.storage") and name in _STORAGE_DTYPES:
            return dataclasses.replace(_DTYPES[_STORAGE_DTYPES[name]])
        if module == "torch" and name in _DTYPES:
            return dataclasses.replace(_DTYPES[name])
        if module.startswith("torch._utils") and name.startswith("_rebuild"):
            raise CheckpointError(self._path, f"unsupported tensor type in checkpoint ({qualname})")
        return self._placeholder_class(module, name)

    def _placeholder_class(self, module: str, name: str) -> type:
        qualname = f"{module}.{name}"
        if qualname not in self._classes:
            callable_ = any(module == ns or module.startswith(ns + ".") for ns in _DATA_NAMESPACES)
            attrs = {"module": module, "name": name, "_callable": callable_, "__module__": __name__}
            self._classes[qualname] = _PlaceholderMeta(name.split(".")[-1], (Placeholder,), attrs)
        return self._classes[qualname]

    # ---- storages ---------------------------------------------------------------------------------------
    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] not in ("storage", b"storage"):
            raise CheckpointError(self._path, f"unknown persistent id in pickle: {pid!r:.80}")
        if self._storage_loader is None:
            raise CheckpointError(self._path, "pickle refers to tensor storages but is not a torch file")
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) > 5 else None
        if _canonical(storage_type) is None:
            raise CheckpointError(self._path, f"unknown storage type {storage_type!r:.80}")
        storage_type = _canonical(storage_type)
        key = key.decode("ascii") if isinstance(key, bytes) else str(key)
        if key not in self._storages:
            self.storage_dtypes.setdefault(key, storage_type)
            raw = self._storage_loader(key, storage_type, int(numel))
            self._storages[key] = _Storage(raw, storage_type, self._big_endian)
        storage = self._storages[key]
        if view is not None:  # legacy storage view: (view_key, offset, size) in elements of the root
            view_key, offset, size = str(view[0]), int(view[1]), int(view[2])
            if view_key not in self._storages:
                raw = None
                if storage.raw is not None:
                    raw = storage.raw[offset * storage_type.itemsize:(offset + size) * storage_type.itemsize]
                self._storages[view_key] = _Storage(raw, storage_type, self._big_endian)
            storage = self._storages[view_key]
        return storage

    # ---- tensors ----------------------------------------------------------------------------------------
    def _tensor(self, storage, offset, size, stride, dtype: TorchDtype | None = None):
        if not isinstance(storage, _Storage):  # (the scan pass of a legacy file has storage.raw None)
            raise CheckpointError(self._path, f"tensor rebuilt from {type(storage).__name__}, not a storage")
        given, dtype = dtype, storage.dtype if dtype is None else _canonical(dtype)
        if dtype is None:
            raise CheckpointError(self._path, f"unknown tensor dtype {given!r:.80}")
        shape = tuple(int(s) for s in size)
        strides = tuple(int(s) for s in stride)
        offset = int(offset)
        if storage.raw is None:
            return None
        elements = storage.elements(dtype, self._path)
        if len(strides) != len(shape) or offset < 0 or min(shape + strides, default=0) < 0:
            raise CheckpointError(self._path, f"invalid tensor layout size={shape} stride={strides}")
        if 0 not in shape:
            last = offset + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
            if last >= elements.size:
                raise CheckpointError(self._path, f"tensor of size {shape} stride {strides} offset {offset} "
                                                  f"reaches past its storage of {elements.size} elements")
        base = elements[offset:] if offset < elements.size else elements[:0]
        item = elements.itemsize
        return np.lib.stride_tricks.as_strided(base, shape, tuple(s * item for s in strides))

    def _rebuild_from_type(self, func, new_type, args, state=None):
        if not isinstance(func, _Safe):
            raise _Refused(f"refusing to call {func!r:.80}")
        return func(*args)

    # ---- other allow-listed callables -------------------------------------------------------------------
    @staticmethod
    def _defaultdict(factory=None, *args):
        return collections.defaultdict(factory if factory in _SAFE_BUILTINS.values() else None, *args)

    @staticmethod
    def _codecs_encode(obj, encoding="utf-8", errors="strict"):
        if not isinstance(obj, str) or encoding.lower().replace("-", "") not in ("latin1", "utf8", "ascii"):
            raise _Refused(f"refusing _codecs.encode({type(obj).__name__}, {encoding!r})")
        return obj.encode(encoding, errors)

    @staticmethod
    def _reconstructor(cls, base, state):
        if isinstance(cls, _PlaceholderMeta) and base is object:
            return cls.__new__(cls)
        if cls in _SAFE_BUILTINS.values() and base in _SAFE_BUILTINS.values():
            return base.__new__(cls) if state is None else base.__new__(cls, state)
        raise _Refused(f"refusing copyreg._reconstructor for {cls!r:.80}")


# ---- file formats -----------------------------------------------------------------------------------------
def _load_zip(path: str, zf: zipfile.ZipFile):
    names = zf.namelist()
    pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if not pkls:
        raise CheckpointError(path, "zip archive without a data.pkl record: not a PyTorch checkpoint")
    root = pkls[0][: -len("data.pkl")]
    order = zf.read(root + "byteorder").strip() if root + "byteorder" in names else b"little"
    if order not in (b"little", b"big"):
        raise CheckpointError(path, f"unknown byte order {order[:20]!r}")
    big_endian, available = order == b"big", set(names)

    def load_storage(key: str, dtype: TorchDtype, numel: int) -> np.ndarray:
        name = f"{root}data/{key}"
        if name not in available:
            raise CheckpointError(path, f"storage record {name!r} is missing from the zip archive")
        size = zf.getinfo(name).file_size
        need = numel * dtype.itemsize
        if size < need:
            raise CheckpointError(path, f"storage record {name!r} holds {size} bytes, {need} expected")
        raw = np.empty(size, dtype=np.uint8)
        with zf.open(name) as f:
            if f.readinto(memoryview(raw)) != size:
                raise CheckpointError(path, f"storage record {name!r} is truncated")
        return raw

    return _Unpickler(io.BytesIO(zf.read(pkls[0])), path, load_storage, big_endian).load()


def _load_stream(path: str, f):
    """A legacy torch.save stream, or a plain pickle with no torch storages."""
    try:
        first = _Unpickler(f, path).load()
    except (_Refused, CheckpointError):
        raise
    except Exception as e:
        raise CheckpointError(path, f"not a PyTorch checkpoint (no zip archive, no pickle: {e})") from None
    if type(first) is not int or first != _MAGIC_NUMBER:
        if f.read(1):
            raise CheckpointError(path, "not a PyTorch checkpoint (bad magic number)")
        return first  # a plain pickle of plain data
    if _Unpickler(f, path).load() != _LEGACY_PROTOCOL:
        raise CheckpointError(path, "unsupported legacy torch protocol version")
    sys_info = _Unpickler(f, path).load()
    big_endian = isinstance(sys_info, dict) and sys_info.get("little_endian") is False
    start = f.tell()

    # Pass 1: walk the pickle to learn each storage's dtype, then locate the storages that follow it.
    scan = _Unpickler(f, path, lambda key, dtype, numel: None, big_endian)
    scan.load()
    keys = _Unpickler(f, path).load()
    if not isinstance(keys, list):
        raise CheckpointError(path, "legacy checkpoint without a storage key list")
    where: dict[str, tuple[int, int]] = {}  # key -> (file offset, bytes)
    file_size = os.fstat(f.fileno()).st_size
    for key in keys:
        if key not in scan.storage_dtypes:
            raise CheckpointError(path, f"storage {key!r} is listed but never used")
        head = f.read(8)
        if len(head) != 8:
            raise CheckpointError(path, f"legacy checkpoint truncated before storage {key!r}")
        (count,) = struct.unpack(">q" if big_endian else "<q", head)
        nbytes = count * scan.storage_dtypes[key].itemsize
        if count < 0 or f.tell() + nbytes > file_size:
            raise CheckpointError(path, f"legacy checkpoint truncated in storage {key!r} ({nbytes} bytes)")
        where[key] = (f.tell(), nbytes)
        f.seek(nbytes, os.SEEK_CUR)

    def load_storage(key: str, dtype: TorchDtype, numel: int) -> np.ndarray:
        if key not in where:
            raise CheckpointError(path, f"storage record {key!r} is missing from the checkpoint")
        pos, nbytes = where[key]
        raw = np.empty(nbytes, dtype=np.uint8)
        f.seek(pos)
        if f.readinto(memoryview(raw)) != nbytes:
            raise CheckpointError(path, f"storage {key!r} is truncated")
        return raw

    # Pass 2: build the objects with the storages filled in.
    end = f.tell()
    f.seek(start)
    result = _Unpickler(f, path, load_storage, big_endian).load()
    f.seek(end)
    return result


def load(path: str | os.PathLike) -> object:
    """Load a PyTorch checkpoint (zip or legacy format) without torch; tensors become numpy arrays.

    Raises CheckpointError for a missing, empty, truncated or malformed file and UnsafePickleError for a
    pickle that names a dangerous global or calls one outside the allow-list.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(path, "file not found")
    if os.path.isdir(path):
        raise CheckpointError(path, "is a directory, not a checkpoint file")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            if not head:
                raise CheckpointError(path, "file is empty")
            f.seek(0)
            if head == b"PK\x03\x04":
                try:
                    zf = zipfile.ZipFile(f)
                except (zipfile.BadZipFile, OSError, EOFError) as e:
                    raise CheckpointError(path, f"damaged or truncated zip archive ({e})") from None
                with zf:
                    return _load_zip(path, zf)
            return _load_stream(path, f)
    except _Refused as e:
        raise UnsafePickleError(path, str(e)) from None
    except CheckpointError:
        raise
    except zipfile.BadZipFile as e:
        raise CheckpointError(path, f"damaged zip archive ({e})") from None
    except (EOFError, pickle.UnpicklingError) as e:
        if isinstance(e, EOFError) or "truncated" in str(e):
            raise CheckpointError(path, "truncated file: the pickle data ends early") from None
        raise CheckpointError(path, f"not a PyTorch checkpoint or a damaged one (pickle: {e})") from None
    except Exception as e:  # anything a malformed pickle makes the unpickler or a rebuilder raise
        raise CheckpointError(path, f"malformed checkpoint ({type(e).__name__}: {e})") from None


# ---- reading values out of placeholders -------------------------------------------------------------------
def to_plain(obj, _active: frozenset = frozenset()):
    """Turn placeholders, omegaconf containers/nodes and numpy scalars into plain dicts, lists and values.

    DictConfig/ListConfig give their `_content`, value nodes their `_val`, other placeholders their state
    dict (an argparse.Namespace gives its attributes), an enum-like placeholder built from one argument gives
    that argument. Arrays are returned as they are; a reference cycle ends in None.
    """
    if id(obj) in _active:
        return None
    active = _active | {id(obj)}
    if isinstance(obj, Placeholder):
        state = obj.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict | None):
            state = {**(state[0] or {}), **(state[1] or {})}  # (dict state, slot state)
        if obj.module.startswith("omegaconf") and isinstance(state, dict):
            if "_content" in state:
                return to_plain(state["_content"], active)
            if "_val" in state:
                return to_plain(state["_val"], active)
        if isinstance(state, dict):
            out = {k: to_plain(v, active) for k, v in state.items()}
        elif state is None and not obj.items and not obj.list_items:
            args = [to_plain(a, active) for a in obj.args]
            return args[0] if len(args) == 1 else (args or None)
        else:
            out = {"state": to_plain(state, active)}
        out.update({k: to_plain(v, active) for k, v in obj.items.items()})
        if obj.list_items:
            out["items"] = [to_plain(v, active) for v in obj.list_items]
        return out
    if isinstance(obj, dict):
        return {to_plain(k, active): to_plain(v, active) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_plain(v, active) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_plain(v, active) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, TorchDtype):
        return obj.name
    return obj
