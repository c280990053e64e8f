"""RVC voice models: read a `.pth` without torch, convert it to MLX weights, load it, describe it.

An RVC voice file is a torch pickle of a dict: ``weight`` (the synthesizer state dict, usually float16,
without the training-only ``enc_q``), ``config`` (the 18-item architecture list), ``f0`` (1: pitch-guided),
``version`` ("v1"/"v2"), ``sr`` ("40k", ...), ``info``; newer exports add ``vocoder``, ``speakers_id``,
``embedder_model``, ... (extra keys are ignored). Conversion folds weight norm (``weight_g``/``weight_v`` or
``parametrizations.weight.original0/1``: w = g · v / ‖v‖, the norm over every dimension but 0), moves conv
weights to MLX layout (Conv1d (C_out, C_in, K) -> (C_out, K, C_in); the upsampling ConvTranspose1d
(C_in, C_out, K) -> (C_out, K, C_in)) and casts to float32, once, at load.

Our native file (`rvc_mlx.checkpoints.native`, kind "voice") holds the converted float32 weights and, in its
meta, the RVC config list, version, f0, vocoder and info string; optionally also the voice's retrieval index
(`rvc_mlx.index.FeatureIndex.to_arrays()` under the ``index.`` prefix), so one file is the whole voice.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import numpy as np

from rvc_mlx.errors import CheckpointError
from rvc_mlx.models.synthesizer import Synthesizer, VoiceConfig

KIND = "voice"  # native-file kind of converted voices
SUPPORTED_VOCODERS = ("HiFi-GAN",)  # `vocoder` values this port implements (absent means HiFi-GAN)
_WEIGHT_NORM_SUFFIXES = (
    (".weight_g", ".weight_v"),  # torch.nn.utils.weight_norm
    (".parametrizations.weight.original0", ".parametrizations.weight.original1"),  # parametrizations API
)
_TRAINING_ONLY = ("enc_q.",)  # state-dict prefixes inference never uses
INDEX_PREFIX = "index."  # native-file keys of a stored retrieval index
_TRANSPOSED_CONV = re.compile(r"^dec\.ups\.\d+\.weight$")  # ConvTranspose1d weights: torch (C_in, C_out, K)


def fold_weight_norm(g: np.ndarray, v: np.ndarray) -> np.ndarray:
    """w = g · v / ‖v‖ with the norm over all dimensions but 0 (weight norm's dim=0), in float64."""
    v64 = v.astype(np.float64)
    norm = np.sqrt(np.sum(v64 * v64, axis=tuple(range(1, v.ndim)), keepdims=True))
    return v64 * (g.astype(np.float64).reshape(norm.shape) / norm)


def convert_state_dict(state: Mapping, path: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """An RVC synthesizer state dict (name -> numpy array) -> MLX parameter dict (float32, MLX layouts).

    Drops `enc_q.*`, folds weight norm, transposes conv weights. Raises CheckpointError for a non-array value
    or an incomplete weight-norm pair.
    """
    arrays: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise CheckpointError(path, f"'weight' has a non-string key {key!r}")
        if key.startswith(_TRAINING_ONLY):
            continue
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu":
            raise CheckpointError(path, f"weight {key!r} is not a numeric tensor ({type(value).__name__})")
        arrays[key] = value

    folded: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        for g_suffix, v_suffix in _WEIGHT_NORM_SUFFIXES:
            if key.endswith(v_suffix):
                break
            if key.endswith(g_suffix):
                base = key[: -len(g_suffix)]
                v = arrays.get(base + v_suffix)
                if v is None:
                    raise CheckpointError(path, f"weight-norm magnitude {key!r} lacks its {v_suffix!r}")
                if value.size != v.shape[0]:
                    raise CheckpointError(
                        path, f"shape mismatch: {key} {value.shape} does not fit {base + v_suffix} {v.shape}"
                    )
                folded[base + ".weight"] = fold_weight_norm(value, v)
                break
        else:
            folded[key] = value
    for key in arrays:
        for g_suffix, v_suffix in _WEIGHT_NORM_SUFFIXES:
            if key.endswith(v_suffix) and key[: -len(v_suffix)] + g_suffix not in arrays:
                raise CheckpointError(path, f"weight-norm direction {key!r} lacks its {g_suffix!r}")

    out: dict[str, np.ndarray] = {}
    for key, value in folded.items():
        if value.ndim == 3 and key.endswith(".weight"):
            value = value.transpose(1, 2, 0) if _TRANSPOSED_CONV.match(key) else value.transpose(0, 2, 1)
        out[key] = np.ascontiguousarray(value, dtype=np.float32)
    return out


def decode_checkpoint(
    ckpt, path: str | os.PathLike | None = None
) -> tuple[VoiceConfig, dict[str, np.ndarray]]:
    """A loaded RVC voice checkpoint (dict with numpy arrays) -> (VoiceConfig, MLX parameter dict)."""
    from rvc_mlx.checkpoints.torch_pickle import to_plain

    if not isinstance(ckpt, Mapping):
        raise CheckpointError(path, f"not an RVC voice: the file holds a {type(ckpt).__name__}, not a dict")
    if "weight" not in ckpt:
        hint = " (a training checkpoint? export the small inference model)" if "model" in ckpt else ""
        raise CheckpointError(path, f"not an RVC voice: no 'weight' entry{hint}")
    if "config" not in ckpt:
        raise CheckpointError(path, "not an RVC voice: no 'config' entry")
    state = ckpt["weight"]
    if not isinstance(state, Mapping):
        raise CheckpointError(path, f"'weight' is a {type(state).__name__}, expected a state dict")
    vocoder = to_plain(ckpt.get("vocoder", "HiFi-GAN"))
    if vocoder not in SUPPORTED_VOCODERS:
        raise CheckpointError(path, f"unsupported vocoder {vocoder!r} (only HiFi-GAN voices are supported)")
    emb_g = state.get("emb_g.weight")
    speakers = int(emb_g.shape[0]) if isinstance(emb_g, np.ndarray) and emb_g.ndim == 2 else None
    config = VoiceConfig.from_rvc(
        to_plain(ckpt["config"]),
        version=to_plain(ckpt.get("version", "v1")),
        f0=to_plain(ckpt.get("f0", 1)),
        speakers=speakers,
        path=path,
    )
    return config, convert_state_dict(state, path)


def read_voice(path: str | os.PathLike) -> tuple[VoiceConfig, dict[str, np.ndarray]]:
    """Read an RVC `.pth` voice (safely, without torch) -> (VoiceConfig, MLX parameter dict, float32)."""
    from rvc_mlx.checkpoints import torch_pickle

    return decode_checkpoint(torch_pickle.load(path), path)


def _native_config(meta: Mapping, path) -> VoiceConfig:
    if not isinstance(meta, Mapping) or "rvc_config" not in meta:
        raise CheckpointError(path, "voice file metadata has no 'rvc_config'")
    return VoiceConfig.from_rvc(meta["rvc_config"], meta.get("version", "v1"), meta.get("f0", 1), path=path)


def build_voice(config: VoiceConfig, weights: Mapping, path: str | os.PathLike | None = None) -> Synthesizer:
    """A Synthesizer for `config` with `weights` loaded strictly (every key and shape checked)."""
    import mlx.core as mx

    from rvc_mlx.checkpoints.native import load_strict

    model = Synthesizer(config)
    load_strict(model, {k: mx.array(v) for k, v in weights.items()}, path)
    mx.eval(model.parameters())
    return model


def load_voice(path: str | os.PathLike) -> Synthesizer:
    """Load a voice from an RVC `.pth` (converted in memory) or from our native file."""
    from rvc_mlx.checkpoints import native

    if native.is_native(path):
        weights, meta = native.load_native(path, KIND)
        weights = {k: v for k, v in weights.items() if not k.startswith(INDEX_PREFIX)}
        return build_voice(_native_config(meta, path), weights, path)
    config, weights = read_voice(path)
    return build_voice(config, weights, path)


def stored_index(path: str | os.PathLike):
    """The retrieval index stored in a native voice file (a `FeatureIndex`), or None (also for `.pth`)."""
    from rvc_mlx.checkpoints import native
    from rvc_mlx.index import FeatureIndex

    if not native.is_native(path):
        return None
    arrays, _ = native.load_native(path, KIND)
    stored = {k[len(INDEX_PREFIX):]: np.asarray(v) for k, v in arrays.items() if k.startswith(INDEX_PREFIX)}
    return FeatureIndex.from_arrays(stored, path=path) if stored else None


def convert_voice(src: str | os.PathLike, dst: str | os.PathLike,
                  index: str | os.PathLike | None = None) -> VoiceConfig:
    """Convert an RVC `.pth` voice to our native file `dst` (checked by a strict load first), with the
    vectors of the RVC `.index` file ``index`` stored alongside if given."""
    from rvc_mlx.checkpoints import native, torch_pickle
    from rvc_mlx.index import FeatureIndex

    ckpt = torch_pickle.load(src)
    config, weights = decode_checkpoint(ckpt, src)
    build_voice(config, weights, src)  # raises on any missing, unexpected or wrong-shaped weight
    if index is not None:
        feature_index = FeatureIndex.load(index)
        if feature_index.dim != config.content_channels:
            raise CheckpointError(index, f"holds {feature_index.dim}-d vectors but the {config.version} "
                                         f"voice takes {config.content_channels}-d features")
        weights = {**weights, **{INDEX_PREFIX + k: v for k, v in feature_index.to_arrays().items()}}
    meta = {
        "rvc_config": config.to_rvc(),
        "version": config.version,
        "f0": int(config.f0),
        "vocoder": "HiFi-GAN",
        "info": str(torch_pickle.to_plain(ckpt.get("info", ""))),
    }
    native.save_native(dst, weights, KIND, meta, source=src)
    return config


def voice_info(path: str | os.PathLike) -> dict:
    """What a voice file holds (for `rvc-mlx info`).

    Keys: format ("rvc-pth" or "rvc-mlx"), version, f0, sample_rate (Hz), speakers, hop_length (samples per
    frame), parameters (count after weight-norm folding), vocoder, info (RVC's training note), index_vectors
    (retrieval vectors stored in a native file, 0 if none).
    """
    from rvc_mlx.checkpoints import native, torch_pickle

    if native.is_native(path):
        weights, meta = native.load_native(path, KIND)
        config = _native_config(meta, path)
        fmt, info = "rvc-mlx", meta.get("info", "")
    else:
        ckpt = torch_pickle.load(path)
        config, weights = decode_checkpoint(ckpt, path)
        fmt, info = "rvc-pth", str(torch_pickle.to_plain(ckpt.get("info", "")))
    index_keys = [k for k in weights if k.startswith(INDEX_PREFIX)]
    stored = weights.get(INDEX_PREFIX + "vectors")
    weights = {k: v for k, v in weights.items() if k not in index_keys}
    return {
        "format": fmt,
        "version": config.version,
        "f0": config.f0,
        "sample_rate": config.sample_rate,
        "speakers": config.spk_embed_dim,
        "hop_length": config.hop_length,
        "parameters": int(sum(int(np.prod(w.shape)) for w in weights.values())),
        "vocoder": "HiFi-GAN",
        "info": info,
        "index_vectors": 0 if stored is None else int(stored.shape[0]),
    }
