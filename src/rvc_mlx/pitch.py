"""Pitch (f0) estimation: one public entry point, `estimate_f0`, over a registry of methods.

Every method receives mono float32 audio at its own sample rate (16 kHz for all of RVC's estimators; the
input is resampled with soxr HQ when needed) and returns f0 in Hz, 0 where unvoiced. Methods that need
weights get a path (default: ``<models dir>/<default_model>``); loaded models are cached per file.

Adding a method is one `register_method(PitchMethod(...))` call at the bottom of the module that implements
it, plus its module name in `_PROVIDERS` so `estimate_f0` imports it on first use.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rvc_mlx.errors import AudioError, CheckpointError
from rvc_mlx.paths import default_model_path

PITCH_SAMPLE_RATE = 16000  # Hz: RVC estimates pitch on the 16 kHz signal
PITCH_HOP_LENGTH = 160  # samples of the 16 kHz signal per f0 frame (100 frames/s)
F0_MIN_HZ = 50.0  # pitch floor RVC passes to every tracker (and the coarse-pitch embedding's bottom)
F0_MAX_HZ = 1100.0  # pitch ceiling, likewise


@dataclass(frozen=True)
class PitchMethod:
    """One registry entry."""

    name: str  # the `method=` value, e.g. "rmvpe"
    # (mono float32 audio at `sample_rate`, model path / loaded model / None, **options) -> f0 in Hz
    # (0 = unvoiced)
    estimate: Callable[..., np.ndarray]
    sample_rate: int = PITCH_SAMPLE_RATE  # Hz the estimator expects its input at
    default_model: str | None = None  # file name under the models directory; None: the method has no weights
    min_samples: int = 1  # shortest input the method accepts, in samples at `sample_rate`
    keeps_float64: bool = False  # float64 input is passed on unrounded (numpy methods: pm, harvest)


_REGISTRY: dict[str, PitchMethod] = {}
# method -> module that registers it when imported (imported on first use, keeping start-up light)
_PROVIDERS = {
    "fcpe": "rvc_mlx.models.fcpe",
    "crepe": "rvc_mlx.models.crepe",
    "crepe-tiny": "rvc_mlx.models.crepe",
    "pm": "rvc_mlx.classic_f0",
    "harvest": "rvc_mlx.classic_f0",
}


def register_method(method: PitchMethod) -> None:
    """Add (or replace) a method under ``method.name``."""
    _REGISTRY[method.name] = method


def _lookup(method: str) -> PitchMethod | None:
    if method not in _REGISTRY and method in _PROVIDERS:
        importlib.import_module(_PROVIDERS[method])
    return _REGISTRY.get(method)


def available_methods() -> list[str]:
    """Names accepted by `estimate_f0` (imports the provider modules)."""
    for method in _PROVIDERS:
        try:
            _lookup(method)
        except ImportError:  # a provider whose optional dependencies are missing is just not available
            pass
    return sorted(_REGISTRY)


# ---------------------------------------------------------------------------------------------------------
# Model cache (shared by the methods that load weights)
# ---------------------------------------------------------------------------------------------------------

_CACHE_SIZE = 4  # loaded models kept (least recently used dropped first)
_cache: dict[tuple, object] = {}
_cache_lock = threading.Lock()


def cached_model(kind: str, path: str | os.PathLike, loader: Callable[[str], object]) -> object:
    """``loader(path)``, cached by (kind, absolute path, size, mtime) so an edited file is reloaded."""
    path = os.path.abspath(os.fspath(path))
    try:
        st = os.stat(path)
    except OSError:
        raise CheckpointError(path, "file not found") from None
    key = (kind, path, st.st_size, st.st_mtime_ns)
    with _cache_lock:
        if key in _cache:
            _cache[key] = _cache.pop(key)  # most recently used last
            return _cache[key]
    model = loader(path)
    with _cache_lock:
        _cache[key] = model
        while len(_cache) > _CACHE_SIZE:
            _cache.pop(next(iter(_cache)))
    return model


def clear_model_cache() -> None:
    with _cache_lock:
        _cache.clear()


# ---------------------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------------------


def _as_mono_float(audio) -> np.ndarray:
    try:
        x = np.asarray(audio)
    except Exception as e:  # anything numpy cannot take is bad input
        raise AudioError(None, f"audio is not an array ({e})") from None
    if x.dtype.kind in "iu":  # integer PCM: scale to [-1, 1)
        x = x.astype(np.float64) / float(2 ** (8 * x.dtype.itemsize - 1))
    elif x.dtype.kind != "f":
        raise AudioError(None, f"audio must be a float or integer array, got dtype {x.dtype}")
    if x.ndim == 2 and 1 in x.shape:
        x = x.reshape(-1)
    if x.ndim != 1:
        raise AudioError(None, f"audio must be mono (N,), got shape {x.shape}")
    if x.size == 0:
        raise AudioError(None, "audio is empty")
    if not np.all(np.isfinite(x)):
        raise AudioError(None, "audio contains NaN or infinite samples")
    return x


def _check_sample_rate(sample_rate) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
        what = type(sample_rate).__name__
        raise AudioError(None, f"sample_rate must be an integer number of Hz, got {what}")
    if sample_rate <= 0:
        raise AudioError(None, f"sample_rate must be positive, got {sample_rate}")
    return int(sample_rate)


def _resample(x: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    if from_hz == to_hz:
        return x.astype(np.float32)
    import soxr

    return soxr.resample(x.astype(np.float32), from_hz, to_hz, quality="HQ").astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------


def estimate_f0(audio, sample_rate: int, *, method: str = "rmvpe", model=None, **options) -> np.ndarray:
    """f0 in Hz of mono ``audio`` (N,) at ``sample_rate`` Hz; 0 where unvoiced.

    For the 16 kHz methods (all of RVC's) the result has one value per 160 samples of the 16 kHz signal
    (100 frames/s; RMVPE gives 1 + N16 // 160 frames). ``model``: the path of the method's weights
    (default ``<models dir>/<file>``, models dir = ``$RVC_MLX_HOME`` or ``~/.cache/rvc-mlx``) or a model
    the method loaded already (e.g. an `rvc_mlx.models.rmvpe.RMVPE`). ``options`` go to the method
    (RMVPE: ``threshold``, ``mel_padding``, ``chunk_frames``).

    Raises AudioError for empty, too short, non-finite or non-mono audio or a bad ``sample_rate``;
    CheckpointError when the model file is missing or is not the method's model; ValueError for an
    unknown method.
    """
    entry = _lookup(method)
    if entry is None:
        raise ValueError(f"unknown f0 method {method!r}; available: {', '.join(available_methods())}")
    sr = _check_sample_rate(sample_rate)
    x = _as_mono_float(audio)
    if not (entry.keeps_float64 and sr == entry.sample_rate and x.dtype == np.float64):
        x = _resample(x, sr, entry.sample_rate)
    if x.size < entry.min_samples:
        need = entry.min_samples
        raise AudioError(None, f"audio too short for {method}: {x.size} samples at {entry.sample_rate} Hz, "
                               f"needs at least {need} ({need / entry.sample_rate:.2f} s)")
    if model is None and entry.default_model is not None:
        model = default_model_path(entry.default_model)
    if isinstance(model, (str, os.PathLike)):
        model = os.fspath(model)
    return entry.estimate(x, model, **options)


# ---------------------------------------------------------------------------------------------------------
# RMVPE
# ---------------------------------------------------------------------------------------------------------

RMVPE_MIN_SAMPLES = 2560  # 17 frames: the fewest for which reflect-padding to 32 frames is defined
RMVPE_CHUNK_FRAMES = 16384  # U-Net chunk: frames kept per chunk (~164 s); bounds memory on long inputs


def _load_rmvpe(path: str):
    from rvc_mlx.checkpoints.rmvpe import load_rmvpe

    return load_rmvpe(path)


def _estimate_rmvpe(x: np.ndarray, model, *, threshold: float | None = None, mel_padding: str = "reflect",
                    chunk_frames: int | None = RMVPE_CHUNK_FRAMES) -> np.ndarray:
    from rvc_mlx.models import rmvpe

    if mel_padding not in rmvpe.MEL_PADDINGS:
        raise ValueError(f"mel_padding must be one of {rmvpe.MEL_PADDINGS}, got {mel_padding!r}")
    if isinstance(model, rmvpe.RMVPE):
        net = model
    elif isinstance(model, str):
        if not Path(model).is_file():
            raise CheckpointError(model, "RMVPE weights not found (run `rvc-mlx download` or pass model=)")
        net = cached_model("rmvpe", model, _load_rmvpe)
    else:
        raise TypeError(f"model must be a path or an RMVPE model, got {type(model).__name__}")
    threshold = rmvpe.DEFAULT_THRESHOLD if threshold is None else threshold
    return rmvpe.f0_from_audio(net, x, threshold, mel_padding, chunk_frames)


register_method(PitchMethod("rmvpe", _estimate_rmvpe, default_model="rmvpe.pt",
                            min_samples=RMVPE_MIN_SAMPLES))
