"""Our native model format: one safetensors file with rvc-mlx metadata, plus strict loading into MLX modules.

The header metadata (all strings, as safetensors requires) is
``{"format": "rvc-mlx", "format_version": "1", "kind": <kind>, "meta": <json of the caller's meta dict>}``.
``kind`` names what the file holds ("voice", "hubert", "rmvpe", ...) so that a loader handed the wrong file
says so instead of failing on a key mismatch.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Mapping

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from rvc_mlx.errors import CheckpointError

FORMAT_NAME = "rvc-mlx"  # value of the "format" metadata entry that marks our files
FORMAT_VERSION = "1"  # the only layout version this code writes and reads
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # a safetensors header larger than this is treated as corrupt
_SHOW_KEYS = 5  # how many offending keys an error message lists


def _read_header(path: str) -> dict:
    """The JSON header of a safetensors file (raises OSError/ValueError on anything malformed)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError("file shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n <= 1 or n > _MAX_HEADER_BYTES:
            raise ValueError(f"implausible safetensors header length {n}")
        if f.read(1) != b"{":  # a JSON object must follow: other files are rejected without reading on
            raise ValueError("no safetensors JSON header")
        raw = b"{" + f.read(n - 1)
        if len(raw) != n:
            raise ValueError("truncated safetensors header")
    header = json.loads(raw.decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError("safetensors header is not a JSON object")
    return header


def _our_metadata(path: str) -> dict[str, str] | None:
    """Our metadata dict if `path` is an rvc-mlx safetensors file, else None (never raises)."""
    try:
        header = _read_header(path)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    meta = header.get("__metadata__")
    if isinstance(meta, dict) and meta.get("format") == FORMAT_NAME:
        return meta
    return None


def is_native(path: str | os.PathLike) -> bool:
    """True if `path` is an rvc-mlx safetensors file (reads the header only; False if unreadable)."""
    return _our_metadata(os.fspath(path)) is not None


def save_native(
    path: str | os.PathLike,
    arrays: Mapping[str, np.ndarray | mx.array],
    kind: str,
    meta: Mapping | None = None,
    source: str | os.PathLike | None = None,
) -> None:
    """Write `arrays` (name -> array of any shape, dtype kept) to `path` atomically.

    The data goes to a temporary file in the destination directory, which then replaces `path`, so a crash
    never leaves a partial file. `meta` must be JSON-serialisable. `source` is the file the arrays were
    converted from: writing over it is refused.
    """
    path = os.fspath(path)
    if source is not None and os.path.abspath(os.fspath(source)) == os.path.abspath(path):
        raise CheckpointError(path, "refusing to overwrite the checkpoint it was converted from")
    if not isinstance(kind, str) or not kind:
        raise ValueError("kind must be a non-empty string")
    try:
        meta_json = json.dumps(dict(meta or {}), sort_keys=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"meta is not JSON-serialisable: {e}") from None
    tensors = {}
    for name, value in arrays.items():
        if not isinstance(name, str):
            raise ValueError(f"array names must be strings, got {name!r}")
        if isinstance(value, mx.array):
            tensors[name] = value
            continue
        value = np.ascontiguousarray(value)
        if value.dtype.kind not in "biuf":
            raise ValueError(f"array {name!r} has dtype {value.dtype}, which the format cannot store")
        tensors[name] = mx.array(value)
    metadata = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "kind": kind, "meta": meta_json}

    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp.safetensors", dir=directory)
    os.close(fd)
    try:
        mx.save_safetensors(tmp, tensors, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_native(path: str | os.PathLike, kind: str | None) -> tuple[dict[str, mx.array], dict]:
    """Read an rvc-mlx file: (name -> mx.array with its stored dtype, the meta dict given to `save_native`).

    `kind` is what the caller expects ("voice", ...); None accepts any kind. Every problem (missing file,
    corrupt data, a safetensors file that is not ours, the wrong kind) raises CheckpointError.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(path, "file not found")
    try:
        header = _read_header(path)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(path, f"not a readable safetensors file ({e})") from None
    info = header.get("__metadata__")
    if not isinstance(info, dict) or info.get("format") != FORMAT_NAME:
        raise CheckpointError(path, "a safetensors file, but not an rvc-mlx model (no rvc-mlx metadata)")
    if info.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            path, f"rvc-mlx format version {info.get('format_version')!r} is not supported (expected "
            f"{FORMAT_VERSION!r}); convert the original checkpoint again"
        )
    if kind is not None and info.get("kind") != kind:
        raise CheckpointError(path, f"this is a {info.get('kind')!r} file, expected {kind!r}")
    try:
        meta = json.loads(info.get("meta", "{}"))
    except ValueError:
        raise CheckpointError(path, "the rvc-mlx metadata is not valid JSON") from None
    try:
        arrays, _ = mx.load(path, format="safetensors", return_metadata=True)
    except (RuntimeError, ValueError, OSError) as e:
        raise CheckpointError(path, f"corrupt safetensors data ({e})") from None
    return arrays, meta


def _describe(keys, shapes: Mapping[str, tuple]) -> str:
    keys = sorted(keys)
    shown = ", ".join(f"{k} {tuple(shapes[k])}" for k in keys[:_SHOW_KEYS])
    more = f" and {len(keys) - _SHOW_KEYS} more" if len(keys) > _SHOW_KEYS else ""
    return shown + more


def load_strict(model: nn.Module, weights: Mapping[str, mx.array], source: str | os.PathLike | None) -> None:
    """Load `weights` into `model`, requiring exactly the model's parameter names and shapes.

    Missing keys, unexpected keys and shape mismatches each raise CheckpointError(source, ...) naming the
    first few offending keys with their shapes. Each weight is cast to the dtype of the parameter it
    replaces, so the model's dtype (float32 unless the caller changed it) decides the compute precision.
    """
    params = dict(tree_flatten(model.parameters()))
    want = {k: tuple(v.shape) for k, v in params.items()}
    have = {k: tuple(v.shape) for k, v in weights.items()}
    missing = want.keys() - have.keys()
    if missing:
        raise CheckpointError(source, f"missing weights: {_describe(missing, want)}")
    unexpected = have.keys() - want.keys()
    if unexpected:
        raise CheckpointError(source, f"unexpected weights: {_describe(unexpected, have)}")
    wrong = sorted(k for k in want if want[k] != have[k])
    if wrong:
        shown = ", ".join(f"{k} {have[k]} (model expects {want[k]})" for k in wrong[:_SHOW_KEYS])
        more = f" and {len(wrong) - _SHOW_KEYS} more" if len(wrong) > _SHOW_KEYS else ""
        raise CheckpointError(source, f"shape mismatch: {shown}{more}")
    cast = [(k, v if v.dtype == params[k].dtype else v.astype(params[k].dtype)) for k, v in weights.items()]
    model.load_weights(cast, strict=True)
