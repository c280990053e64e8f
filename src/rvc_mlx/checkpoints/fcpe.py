"""FCPE checkpoints: torchfcpe's `fcpe_c_v001.pt` (or a native file converted from it) -> `FCPE` in MLX.

The torch file is `{"global_step", "model": state dict, "config_dict": {"mel": ..., "model": ...}}`.
Conversion (once, at load) folds the output layer's weight norm, lays convolutions out as (C_out, K, C_in),
1x1 convolutions and linear layers as (C_in, C_out), the depthwise kernels as (K, C), and folds the
optional harmonic embedding (index 0 at inference) into the input stack's last bias. The unused
per-block LayerNorm of a conv-only model is dropped. Models with attention (`conv_only: false`) are
refused: the published weights have none.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from rvc_mlx.errors import CheckpointError
from rvc_mlx.models.fcpe import FCPE, FcpeConfig

NATIVE_KIND = "fcpe"  # `kind` of our native files holding an FCPE model
BUNDLED_NAME = "fcpe_c_v001.pt"  # the checkpoint shipped inside the torchfcpe wheel (assets/)

_cache: dict[str, FCPE] = {}  # resolved path -> loaded model (the bundled model is loaded once)


def bundled_checkpoint_path() -> Path | None:
    """Path of torchfcpe's bundled checkpoint if the package is installed (not imported), else None."""
    try:
        spec = importlib.util.find_spec("torchfcpe")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / "assets" / BUNDLED_NAME
    return path if path.is_file() else None


def config_from_dict(config_dict: Mapping, path: str | os.PathLike | None = None) -> FcpeConfig:
    """FcpeConfig from torchfcpe's `config_dict` (its "mel" and "model" sections)."""
    try:
        mel, model = config_dict["mel"], config_dict["model"]
        if model.get("type") != "CFNaiveMelPE":
            raise CheckpointError(path, f"model type {model.get('type')!r} is not CFNaiveMelPE")
        if str(mel.get("type", "default")).lower() not in ("default", "none"):
            raise CheckpointError(path, f"mel type {mel.get('type')!r} is not supported (only log-mel)")
        if not model.get("conv_only", False):
            raise CheckpointError(path, "FCPE with attention layers (conv_only: false) is not supported")
        return FcpeConfig(
            sample_rate=int(mel["sr"]),
            n_mels=int(mel["num_mels"]),
            n_fft=int(mel["n_fft"]),
            win_length=int(mel["win_size"]),
            hop_length=int(mel["hop_size"]),
            mel_fmin=float(mel["fmin"]) if mel.get("fmin") is not None else 0.0,
            mel_fmax=float(mel["fmax"]) if mel.get("fmax") is not None else float(mel["sr"]) / 2,
            hidden_dims=int(model["hidden_dims"]),
            n_layers=int(model["n_layers"]),
            out_dims=int(model["out_dims"]),
            f0_min=float(model["f0_min"]),
            f0_max=float(model["f0_max"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(path, f"config_dict is incomplete or malformed ({e!r})") from None


def _take(state: dict, key: str, shape: tuple, path) -> np.ndarray:
    if key not in state:
        raise CheckpointError(path, f"missing weight {key}")
    value = np.asarray(state.pop(key), dtype=np.float32)
    if value.shape != shape:
        raise CheckpointError(path, f"{key} has shape {value.shape}, expected {shape}")
    return value


def convert_state_dict(
    state: Mapping[str, np.ndarray], config: FcpeConfig, path: str | os.PathLike | None = None
) -> dict[str, np.ndarray]:
    """torchfcpe CFNaiveMelPE state dict (name -> array) -> our FCPE parameter dict (name -> float32 array).

    Every expected key must be present with its shape; any key left over raises CheckpointError.
    """
    state = dict(state)
    c = config
    h, inner, k = c.hidden_dims, c.hidden_dims * c.expansion, c.kernel_size
    out: dict[str, np.ndarray] = {}

    def conv(key: str, c_out: int, c_in: int, width: int) -> np.ndarray:  # torch (C_out, C_in, K)
        return np.ascontiguousarray(_take(state, key, (c_out, c_in, width), path).transpose(0, 2, 1))

    def pointwise(key: str, c_out: int, c_in: int) -> np.ndarray:  # torch 1x1 conv (C_out, C_in, 1)
        return np.ascontiguousarray(_take(state, key, (c_out, c_in, 1), path)[:, :, 0].T)  # (C_in, C_out)

    out["input_conv1.weight"] = conv("input_stack.0.weight", h, c.n_mels, 3)
    out["input_conv1.bias"] = _take(state, "input_stack.0.bias", (h,), path)
    out["input_norm.weight"] = _take(state, "input_stack.1.weight", (h,), path)
    out["input_norm.bias"] = _take(state, "input_stack.1.bias", (h,), path)
    out["input_conv2.weight"] = conv("input_stack.3.weight", h, h, 3)
    bias2 = _take(state, "input_stack.3.bias", (h,), path)
    if "harmonic_emb.weight" in state:  # x + emb[0] after the stack == a larger bias
        bias2 = bias2 + np.asarray(state.pop("harmonic_emb.weight"), dtype=np.float32)[0]
    out["input_conv2.bias"] = bias2
    for i in range(c.n_layers):
        src, dst = f"net.encoder_layers.{i}.conformer.net.", f"layers.{i}."
        out[dst + "norm.weight"] = _take(state, src + "0.weight", (h,), path)
        out[dst + "norm.bias"] = _take(state, src + "0.bias", (h,), path)
        out[dst + "expand.weight"] = pointwise(src + "2.weight", 2 * inner, h)
        out[dst + "expand.bias"] = _take(state, src + "2.bias", (2 * inner,), path)
        depthwise = _take(state, src + "4.conv.weight", (inner, 1, k), path)  # (C, 1, K)
        out[dst + "depthwise.weight"] = np.ascontiguousarray(depthwise[:, 0, :].T)  # (K, C)
        out[dst + "depthwise.bias"] = _take(state, src + "4.conv.bias", (inner,), path)
        out[dst + "project.weight"] = pointwise(src + "6.weight", h, inner)
        out[dst + "project.bias"] = _take(state, src + "6.bias", (h,), path)
        for name in ("weight", "bias"):  # the attention pre-norm, unused without attention
            state.pop(f"net.encoder_layers.{i}.norm.{name}", None)
    out["out_norm.weight"] = _take(state, "norm.weight", (h,), path)
    out["out_norm.bias"] = _take(state, "norm.bias", (h,), path)
    # weight norm over the input dims, W = g * v / |v|: old (weight_g/_v) or parametrization key names
    for g_key, v_key in (("output_proj.weight_g", "output_proj.weight_v"),
                         ("output_proj.parametrizations.weight.original0",
                          "output_proj.parametrizations.weight.original1")):
        if v_key in state:
            v = _take(state, v_key, (c.out_dims, h), path).astype(np.float64)
            g = _take(state, g_key, (c.out_dims, 1), path).astype(np.float64)
            weight = (g * v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
            break
    else:
        weight = _take(state, "output_proj.weight", (c.out_dims, h), path)
    out["out_proj.weight"] = np.ascontiguousarray(weight.T)  # (hidden, out_dims)
    out["out_proj.bias"] = _take(state, "output_proj.bias", (c.out_dims,), path)
    out["cent_table"] = _take(state, "cent_table", (c.out_dims,), path)
    state.pop("gaussian_blurred_cent_mask", None)  # training-only buffer
    if state:
        extra = ", ".join(sorted(state)[:5])
        raise CheckpointError(path, f"unexpected weights (not a conv-only CFNaiveMelPE?): {extra}")
    return out


def build_fcpe(params: Mapping, config: FcpeConfig, path: str | os.PathLike | None = None) -> FCPE:
    """An FCPE with `params` (our names and layouts; numpy or MLX arrays) loaded strictly."""
    import mlx.core as mx

    from rvc_mlx.checkpoints.native import load_strict

    model = FCPE(config)
    load_strict(model, {k: v if isinstance(v, mx.array) else mx.array(v) for k, v in params.items()}, path)
    model.eval()
    return model


def _config_meta(config: FcpeConfig) -> dict:
    return {name: getattr(config, name) for name in FcpeConfig.__dataclass_fields__}


def read_torch_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], FcpeConfig]:
    """torchfcpe .pt -> (our parameter dict, config), read with the safe torch-file reader."""
    from rvc_mlx.checkpoints.torch_pickle import load as load_torch_file

    ckpt = load_torch_file(path)
    if not isinstance(ckpt, Mapping) or "model" not in ckpt or "config_dict" not in ckpt:
        raise CheckpointError(path, "not a torchfcpe checkpoint (expected 'model' and 'config_dict' entries)")
    config = config_from_dict(ckpt["config_dict"], path)
    return convert_state_dict(ckpt["model"], config, path), config


def convert_fcpe_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Convert a torchfcpe .pt to our native safetensors file (kind "fcpe")."""
    from rvc_mlx.checkpoints.native import save_native

    params, config = read_torch_checkpoint(src)
    save_native(dst, params, kind=NATIVE_KIND, meta={"config": _config_meta(config)}, source=src)


def default_checkpoint_path() -> Path | None:
    """`<models dir>/fcpe_c_v001.pt` if present, else torchfcpe's bundled copy if installed, else None.

    (`pip install --no-deps torchfcpe` provides the file without torch; it is never imported.)
    """
    from rvc_mlx.paths import default_model_path

    local = default_model_path(BUNDLED_NAME)
    return local if local.is_file() else bundled_checkpoint_path()


def load_fcpe(path: str | os.PathLike | None = None) -> FCPE:
    """FCPE from a native file or a torchfcpe .pt; None: `default_checkpoint_path()`. Cached per file."""
    from rvc_mlx.checkpoints.native import is_native, load_native

    if path is None:
        path = default_checkpoint_path()
        if path is None:
            raise CheckpointError(None, f"no FCPE checkpoint: put {BUNDLED_NAME} in the models directory "
                                        "or install torchfcpe (pip install --no-deps torchfcpe)")
    key = os.path.realpath(os.fspath(path))
    if key in _cache:
        return _cache[key]
    if not os.path.isfile(key):
        raise CheckpointError(path, "file not found")
    if is_native(key):
        arrays, meta = load_native(key, NATIVE_KIND)
        try:
            config = FcpeConfig(**meta["config"])
        except (KeyError, TypeError) as e:
            raise CheckpointError(path, f"FCPE config missing or malformed in the metadata ({e!r})") from None
        params = arrays
    else:
        params, config = read_torch_checkpoint(key)
    model = build_fcpe(params, config, path)
    _cache[key] = model
    return model
