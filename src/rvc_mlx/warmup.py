"""First-call warm-up: throw-away conversions that make MLX build every kernel a real conversion needs.

A fresh process pays, on its first conversion, for everything MLX builds lazily: on CUDA the NVRTC
compilation of its JIT kernels (131 s on a fresh H100 machine against 0.19 s warm; MLX keeps the compiled
kernels on disk, under ``MLX_PTX_CACHE_DIR``, so a later process pays ~3 s), cuDNN's convolution plans, the
``mx.compile`` traces (and, on the CPU, their g++ builds), and on the CPU the GEMM weight layouts the conv
layers cache. ``warm_up`` pays that ahead of time, on synthetic audio, so the first real conversion runs
at about the warm speed.

Kernels differ per *shape class*, not per exact length: the chunk path (an input longer than
``Segmentation.max_seconds`` is cut into ``center_seconds`` chunks plus a shorter remainder), the random
draws (on unless ``deterministic``), the retrieval (when an index is loaded and ``index_rate`` > 0), the
protect mix (``protect`` < 0.5) and the f0 method. The default lengths therefore are one short input and
one just past ``max_seconds``, whose conversion runs a full-length chunk and a short remainder; pass the
same conversion options the real calls will use.

Warming changes nothing a later conversion computes: the caches it fills hold kernels, plans and weight
layouts only, and MLX's global random state is restored afterwards (a seeded or noisy warm-up draws from
it).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import mlx.core as mx  # the package's __init__ has already loaded a fast BLAS for MLX
import numpy as np

from rvc_mlx.errors import RVCError
from rvc_mlx.pitch import PITCH_SAMPLE_RATE

SHORT_SECONDS = 3.0  # the short warm-up input: one chunk, a few hundred frames
PAST_SPLIT_SECONDS = 5.0  # the long input exceeds Segmentation.max_seconds by this: a full chunk + remainder


@dataclass(frozen=True)
class WarmUpResult:
    """What a warm-up did and how long it took."""

    elapsed_seconds: float  # wall time of all the warm-up conversions together
    runs: tuple[tuple[float, float], ...]  # per conversion: (audio length in seconds, wall time in seconds)


def default_seconds(converter) -> tuple[float, float]:
    """The default warm-up lengths for ``converter``: a short input and one that its segmentation splits."""
    return SHORT_SECONDS, float(converter.segmentation.max_seconds) + PAST_SPLIT_SECONDS


def synthetic_voice(seconds: float, sample_rate: int = PITCH_SAMPLE_RATE) -> np.ndarray:
    """Deterministic voice-like audio (N,) float32: a gliding harmonic tone, gated into phrases so that
    both voiced and unvoiced frames occur, over a little seeded noise."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    f0_hz = 140.0 + 60.0 * np.sin(2 * np.pi * 0.4 * t)
    phase = 2 * np.pi * np.cumsum(f0_hz) / sample_rate
    tone = sum(np.sin(k * phase) / k for k in range(1, 9))
    gate = np.sin(2 * np.pi * 0.7 * t) > -0.3
    noise = np.random.default_rng(1234).standard_normal(t.shape)
    return (0.3 * tone * gate + 0.003 * noise).astype(np.float32)


def _random_key_seed() -> int:
    """The integer whose ``mx.random.seed`` recreates MLX's current global key (two uint32 words)."""
    high, low = (int(v) for v in mx.random.state[0].tolist())
    return (high << 32) | low


def warm_up(converter, seconds: Sequence[float] | None = None, f0_method: str = "rmvpe",
            **options) -> WarmUpResult:
    """Run throw-away conversions of synthetic audio through ``converter`` (a ``VoiceConverter``).

    ``seconds``: the lengths to convert, in seconds of audio (default ``default_seconds(converter)``:
    3 s and ``max_seconds`` + 5 s); ``f0_method`` and ``options``: ``ConversionOptions`` fields, the ones
    the real conversions will use (they decide which kernels run). Returns the wall time, in total and per
    length. MLX's global random state is left as it was.
    """
    from rvc_mlx.pipeline import ConversionOptions

    lengths = tuple(float(s) for s in (default_seconds(converter) if seconds is None else seconds))
    if not lengths or min(lengths) < 0.5:
        raise RVCError(f"warm-up lengths must be at least 0.5 s each, got {lengths}")
    opts = ConversionOptions(f0_method=f0_method, **options)
    key_seed = _random_key_seed()
    runs = []
    t_start = time.perf_counter()
    try:
        for length in lengths:
            audio = synthetic_voice(length)
            t0 = time.perf_counter()
            converter.convert_16k(audio, opts)  # returns numpy: everything is evaluated
            runs.append((length, time.perf_counter() - t0))
    finally:
        mx.random.seed(key_seed)
    return WarmUpResult(elapsed_seconds=time.perf_counter() - t_start, runs=tuple(runs))
