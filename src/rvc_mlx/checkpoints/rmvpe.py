"""RMVPE weights: the PyTorch ``rmvpe.pt`` (a plain ``E2E`` state dict) or our native file (kind "rmvpe").

Conversion (once, at load): every batch norm after a convolution is folded into it (weight * scale, bias =
shift); the encoder's input norm becomes a scale and shift; 3x3 conv weights go to the (3 C_in, 3 C_out)
layout of `Conv3x3`;
each transposed conv becomes the 2x2 four-phase conv `UpConv` expects; 1x1 convs, the GRU and the linear
layer are stored (in, out); the GRU input columns follow our (mel_bin, channel) feature order.
"""

from __future__ import annotations

import os
import re

import numpy as np

from rvc_mlx.errors import CheckpointError
from rvc_mlx.models.rmvpe import N_BINS, N_MELS, RMVPE, RMVPEConfig

KIND = "rmvpe"  # native-format kind
BN_EPS = 1e-5  # BatchNorm2d default eps in the reference
_BN_FIELDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


# ---------------------------------------------------------------------------------------------------------
# The reference layout
# ---------------------------------------------------------------------------------------------------------


def _count(state: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in state if (m := rx.match(k))})


def infer_config(state: dict[str, np.ndarray], path=None) -> RMVPEConfig:
    """Architecture from the key names and shapes of an ``E2E`` state dict."""
    try:
        return RMVPEConfig(
            n_blocks=_count(state, r"unet\.encoder\.layers\.0\.conv\.(\d+)\."),
            en_de_layers=_count(state, r"unet\.encoder\.layers\.(\d+)\."),
            inter_layers=_count(state, r"unet\.intermediate\.layers\.(\d+)\."),
            en_out_channels=int(state["unet.encoder.layers.0.conv.0.conv.0.weight"].shape[0]),
            gru_hidden=int(state["fc.0.gru.weight_hh_l0"].shape[1]),
        )
    except (KeyError, AttributeError, IndexError) as e:
        raise CheckpointError(path, f"not an RMVPE checkpoint (no E2E weight {e})") from None


def _bn_keys(prefix: str, c: int) -> dict[str, tuple]:
    return {f"{prefix}.{f}": ((c,) if f != "num_batches_tracked" else ()) for f in _BN_FIELDS}


def _res_block_keys(prefix: str, c_in: int, c_out: int) -> dict[str, tuple]:
    keys = {f"{prefix}.conv.0.weight": (c_out, c_in, 3, 3), f"{prefix}.conv.3.weight": (c_out, c_out, 3, 3)}
    keys.update(_bn_keys(f"{prefix}.conv.1", c_out))
    keys.update(_bn_keys(f"{prefix}.conv.4", c_out))
    if c_in != c_out:
        keys.update({f"{prefix}.shortcut.weight": (c_out, c_in, 1, 1), f"{prefix}.shortcut.bias": (c_out,)})
    return keys


def expected_shapes(config: RMVPEConfig) -> dict[str, tuple]:
    """Every key of the reference ``E2E`` state dict with its shape."""
    n, ch, levels = config.n_blocks, config.en_out_channels, config.en_de_layers
    keys = _bn_keys("unet.encoder.bn", 1)
    for i in range(levels):
        c_in, c_out = (1 if i == 0 else ch * 2 ** (i - 1)), ch * 2**i
        for b in range(n):
            c_blk = c_in if b == 0 else c_out
            keys.update(_res_block_keys(f"unet.encoder.layers.{i}.conv.{b}", c_blk, c_out))
    deep = ch * 2**levels
    for i in range(config.inter_layers):
        for b in range(n):
            c_in = deep // 2 if i == 0 and b == 0 else deep
            keys.update(_res_block_keys(f"unet.intermediate.layers.{i}.conv.{b}", c_in, deep))
    for i in range(levels):
        c_in, c_out = deep // 2**i, deep // 2 ** (i + 1)
        keys[f"unet.decoder.layers.{i}.conv1.0.weight"] = (c_in, c_out, 3, 3)
        keys.update(_bn_keys(f"unet.decoder.layers.{i}.conv1.1", c_out))
        for b in range(n):
            c_blk = 2 * c_out if b == 0 else c_out
            keys.update(_res_block_keys(f"unet.decoder.layers.{i}.conv2.{b}", c_blk, c_out))
    keys.update({"cnn.weight": (3, ch, 3, 3), "cnn.bias": (3,)})
    h = config.gru_hidden
    for suffix in ("", "_reverse"):
        keys.update({f"fc.0.gru.weight_ih_l0{suffix}": (3 * h, 3 * N_MELS),
                     f"fc.0.gru.weight_hh_l0{suffix}": (3 * h, h),
                     f"fc.0.gru.bias_ih_l0{suffix}": (3 * h,), f"fc.0.gru.bias_hh_l0{suffix}": (3 * h,)})
    keys.update({"fc.1.weight": (N_BINS, 2 * h), "fc.1.bias": (N_BINS,)})
    return keys


def check_state(state: dict, path=None) -> RMVPEConfig:
    """Strict check of a reference state dict: exactly the expected keys, shapes and float data."""
    if not isinstance(state, dict) or not state:
        what = type(state).__name__
        raise CheckpointError(path, f"not an RMVPE checkpoint (expected a non-empty state dict, got {what})")
    if "model" in state or "weight" in state or "params" in state:
        raise CheckpointError(path, "not an RMVPE checkpoint (looks like an RVC voice or another model)")
    config = infer_config(state, path)
    want = expected_shapes(config)
    missing = sorted(want.keys() - state.keys())
    unexpected = sorted(state.keys() - want.keys())
    if missing or unexpected:
        detail = (f"missing {missing[:5]}" if missing else "") + (" " if missing and unexpected else "") + (
            f"unexpected {unexpected[:5]}" if unexpected else "")
        raise CheckpointError(path, f"not an RMVPE (E2E) state dict: {detail}")
    for k, shape in want.items():
        v = state[k]
        if not isinstance(v, np.ndarray) or tuple(v.shape) != shape:
            got = tuple(v.shape) if isinstance(v, np.ndarray) else type(v).__name__
            raise CheckpointError(path, f"RMVPE weight {k} has shape {got}, expected {shape}")
        if k.endswith("num_batches_tracked"):
            continue
        if v.dtype.kind != "f":
            raise CheckpointError(path, f"RMVPE weight {k} has dtype {v.dtype}, expected floating point")
        if not np.all(np.isfinite(v)):
            raise CheckpointError(path, f"RMVPE weight {k} has non-finite values")
    return config


# ---------------------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------------------


def _f64(state: dict, key: str) -> np.ndarray:
    return np.asarray(state[key], dtype=np.float64)


def _f32(state: dict, key: str) -> np.ndarray:
    """Large weights stay float32 (one rounding per folded product, like the reference's float32 math)."""
    return np.asarray(state[key], dtype=np.float32)


def _bn(state: dict, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) of an eval-mode batch norm."""
    scale = _f64(state, f"{prefix}.weight") / np.sqrt(_f64(state, f"{prefix}.running_var") + BN_EPS)
    return scale, _f64(state, f"{prefix}.bias") - _f64(state, f"{prefix}.running_mean") * scale


def _conv3x3_rows(w: np.ndarray) -> np.ndarray:
    """(C_out, C_in, 3 time, 3 mel) -> `Conv3x3` layout (3 C_in, 3 C_out): rows (mel tap, C_in), columns
    (time tap, C_out)."""
    c_out, c_in = w.shape[:2]
    return w.transpose(3, 1, 2, 0).reshape(3 * c_in, 3 * c_out)


def _conv_bn(state: dict, conv: str, bn: str, out: dict, name: str) -> None:
    scale, shift = _bn(state, bn)
    out[f"{name}.weight"] = _conv3x3_rows(_f32(state, conv) * scale.astype(np.float32)[:, None, None, None])
    out[f"{name}.bias"] = shift


def _res_block(state: dict, src: str, dst: str, out: dict) -> None:
    _conv_bn(state, f"{src}.conv.0.weight", f"{src}.conv.1", out, f"{dst}.conv1")
    _conv_bn(state, f"{src}.conv.3.weight", f"{src}.conv.4", out, f"{dst}.conv2")
    if f"{src}.shortcut.weight" in state:
        out[f"{dst}.shortcut.weight"] = _f64(state, f"{src}.shortcut.weight")[:, :, 0, 0].T  # (C_in, C_out)
        out[f"{dst}.shortcut.bias"] = _f64(state, f"{src}.shortcut.bias")


# Output phase p (0: even, 1: odd) and input offset d -> kernel tap of the stride-2 transposed conv (or None).
_PHASE_TAP = {(0, 0): 1, (0, 1): None, (1, 0): 2, (1, 1): 0}


def _up_conv(state: dict, src: str, dst: str, out: dict) -> None:
    scale, shift = _bn(state, f"{src}.1")
    wt = _f32(state, f"{src}.0.weight") * scale.astype(np.float32)[None, :, None, None]  # (C_in, C_out, 3, 3)
    c_in, c_out = wt.shape[:2]
    w = np.zeros((2, 2, c_out, 2, 2, c_in), dtype=np.float32)  # (phase_t, phase_f, C_out, dt, df, C_in)
    for (pa, da), ka in _PHASE_TAP.items():
        for (pb, db), kb in _PHASE_TAP.items():
            if ka is not None and kb is not None:
                w[pa, pb, :, da, db, :] = wt[:, :, ka, kb].T
    out[f"{dst}.weight"] = w.reshape(4 * c_out, 2, 2, c_in)
    out[f"{dst}.bias"] = np.tile(shift, 4)


def convert_rmvpe_state(state: dict[str, np.ndarray], path=None) -> tuple[dict[str, np.ndarray], RMVPEConfig]:
    """Reference ``E2E`` state dict -> (our float32 weights by name, config). Checks the state first."""
    config = check_state(state, path)
    n, levels = config.n_blocks, config.en_de_layers
    out: dict[str, np.ndarray] = {}
    scale, shift = _bn(state, "unet.encoder.bn")
    out["unet.input_scale"], out["unet.input_shift"] = scale, shift
    for i in range(levels):
        for b in range(n):
            _res_block(state, f"unet.encoder.layers.{i}.conv.{b}", f"unet.encoder.{i}.blocks.{b}", out)
    for i in range(config.inter_layers):
        for b in range(n):
            src = f"unet.intermediate.layers.{i}.conv.{b}"
            _res_block(state, src, f"unet.intermediate.{i}.blocks.{b}", out)
    for i in range(levels):
        _up_conv(state, f"unet.decoder.layers.{i}.conv1", f"unet.decoder.{i}.up", out)
        for b in range(n):
            _res_block(state, f"unet.decoder.layers.{i}.conv2.{b}", f"unet.decoder.{i}.stage.blocks.{b}", out)
    out["unet.head.weight"] = _conv3x3_rows(_f32(state, "cnn.weight"))
    out["unet.head.bias"] = _f64(state, "cnn.bias")

    h = config.gru_hidden
    # reference feature index c * 128 + f  ->  ours f * 3 + c
    perm = (np.arange(3)[None, :] * N_MELS + np.arange(N_MELS)[:, None]).reshape(-1)  # ours -> reference
    w_ih, b_ih, w_hh, b_hn = [], [], [], []
    for suffix in ("", "_reverse"):
        wi = _f32(state, f"fc.0.gru.weight_ih_l0{suffix}")  # (3H, 384)
        bi = _f64(state, f"fc.0.gru.bias_ih_l0{suffix}").copy()
        bh = _f64(state, f"fc.0.gru.bias_hh_l0{suffix}")
        bi[: 2 * h] += bh[: 2 * h]  # r and z see b_ih + b_hh; n keeps b_hn inside r * (...)
        w_ih.append(wi[:, perm].T)  # (384, 3H)
        b_ih.append(bi)
        w_hh.append(_f32(state, f"fc.0.gru.weight_hh_l0{suffix}").T)  # (H, 3H)
        b_hn.append(bh[None, 2 * h :])  # (1, H)
    out["gru.w_ih"] = np.concatenate(w_ih, axis=1)
    out["gru.b_ih"] = np.concatenate(b_ih)
    out["gru.w_hh"] = np.stack(w_hh)
    out["gru.b_hn"] = np.stack(b_hn)
    out["fc.weight"] = _f32(state, "fc.1.weight").T
    out["fc.bias"] = _f64(state, "fc.1.bias")
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}, config


# ---------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------


def _read_torch(path: str) -> dict:
    from rvc_mlx.checkpoints import torch_pickle

    obj = torch_pickle.load(path)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "weight" not in obj:
        obj = obj["model"]  # some exports wrap the state dict
    if not isinstance(obj, dict):
        what = type(obj).__name__
        raise CheckpointError(path, f"not an RMVPE checkpoint (a pickled {what}, not a state dict)")
    return obj


def model_from_weights(weights: dict, config: RMVPEConfig, source=None) -> RMVPE:
    """Build an `RMVPE` and load our converted weights into it strictly."""
    import mlx.core as mx

    from rvc_mlx.checkpoints.native import load_strict

    model = RMVPE(config)
    load_strict(model, {k: v if isinstance(v, mx.array) else mx.array(v) for k, v in weights.items()}, source)
    model.eval()
    return model


def model_from_state(state: dict[str, np.ndarray], path=None) -> RMVPE:
    """A reference state dict (numpy arrays) -> a ready `RMVPE`."""
    weights, config = convert_rmvpe_state(state, path)
    return model_from_weights(weights, config, path)


def load_rmvpe(path: str | os.PathLike) -> RMVPE:
    """Load ``rmvpe.pt`` (PyTorch state dict, read without torch) or our converted file."""
    from rvc_mlx.checkpoints import native

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(path, "file not found")
    if native.is_native(path):
        arrays, meta = native.load_native(path, KIND)
        try:
            config = RMVPEConfig(**meta["config"])
        except (KeyError, TypeError) as e:
            raise CheckpointError(path, f"rmvpe file without a valid config ({e})") from None
        return model_from_weights(arrays, config, path)
    return model_from_state(_read_torch(path), path)


def convert_rmvpe(src: str | os.PathLike, dst: str | os.PathLike) -> RMVPEConfig:
    """Convert ``rmvpe.pt`` into our native file (folded, transposed float32 weights)."""
    from rvc_mlx.checkpoints import native

    weights, config = convert_rmvpe_state(_read_torch(os.fspath(src)), os.fspath(src))
    native.save_native(dst, weights, KIND, meta={"config": config.to_dict()}, source=src)
    return config
