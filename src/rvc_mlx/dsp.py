"""Spectral front ends in MLX: mel filterbank, STFT magnitude, log-mel.

Layout is time-major everywhere: signals are (B, N) samples, spectra are (B, frames, bins) and mel
spectrograms (B, frames, n_mels). The filterbank equals ``librosa.filters.mel`` (no librosa at run time)
and the STFT equals ``torch.stft`` with a periodic Hann window (``torch.hann_window``) and centre padding.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import mlx.core as mx  # importing rvc_mlx.dsp runs rvc_mlx/__init__ (BLAS set-up) first
import numpy as np

PAD_MODES = ("reflect", "constant", "replicate")


# ---------------------------------------------------------------------------------------------------------
# Mel filterbank (numpy, computed once per configuration)
# ---------------------------------------------------------------------------------------------------------

_SLANEY_F_SP = 200.0 / 3  # Hz per mel below the break (Slaney scale)
_SLANEY_MIN_LOG_HZ = 1000.0  # break between the linear and the log part (Slaney scale)
_SLANEY_MIN_LOG_MEL = _SLANEY_MIN_LOG_HZ / _SLANEY_F_SP
_SLANEY_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(frequencies_hz: np.ndarray, htk: bool = False) -> np.ndarray:
    """Hz -> mel (HTK formula or the Slaney scale), float64, any shape."""
    f = np.asarray(frequencies_hz, dtype=np.float64)
    if htk:
        return 2595.0 * np.log10(1.0 + f / 700.0)
    mels = f / _SLANEY_F_SP
    log_part = f >= _SLANEY_MIN_LOG_HZ
    safe = np.where(log_part, f, _SLANEY_MIN_LOG_HZ)
    return np.where(log_part, _SLANEY_MIN_LOG_MEL + np.log(safe / _SLANEY_MIN_LOG_HZ) / _SLANEY_LOGSTEP, mels)


def mel_to_hz(mels: np.ndarray, htk: bool = False) -> np.ndarray:
    """mel -> Hz, the inverse of :func:`hz_to_mel`."""
    m = np.asarray(mels, dtype=np.float64)
    if htk:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    freqs = _SLANEY_F_SP * m
    log_part = m >= _SLANEY_MIN_LOG_MEL
    return np.where(log_part, _SLANEY_MIN_LOG_HZ * np.exp(_SLANEY_LOGSTEP * (m - _SLANEY_MIN_LOG_MEL)), freqs)


@functools.lru_cache(maxsize=32)
def _mel_filterbank_cached(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float, htk: bool, norm: str | None
) -> np.ndarray:
    fft_freqs = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)  # (n_fft//2+1,) Hz
    mel_points = np.linspace(hz_to_mel(fmin, htk), hz_to_mel(fmax, htk), n_mels + 2)
    mel_f = mel_to_hz(mel_points, htk)  # (n_mels+2,) band edges in Hz
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]  # (n_mels+2, n_freqs)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    # librosa stores the triangles in float32 before normalising; do the same so the result is bit-equal.
    weights = np.maximum(0.0, np.minimum(lower, upper)).astype(np.float32)  # (n_mels, n_freqs)
    if norm == "slaney":
        enorm = 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])  # constant energy per band
        weights = (weights * enorm[:, None]).astype(np.float32)
    weights.flags.writeable = False
    return weights


def mel_filterbank(
    sample_rate: int,
    n_fft: int,
    n_mels: int,
    fmin: float = 0.0,
    fmax: float | None = None,
    htk: bool = False,
    norm: str | None = "slaney",
) -> np.ndarray:
    """Triangular mel filterbank equal to ``librosa.filters.mel``; float32 (n_mels, n_fft // 2 + 1).

    ``fmax=None`` means ``sample_rate / 2``; ``norm`` is ``"slaney"`` (area normalisation) or ``None``.
    The array is cached per configuration and read-only.
    """
    if norm not in ("slaney", None):
        raise ValueError(f"norm must be 'slaney' or None, got {norm!r}")
    if fmax is None:
        fmax = sample_rate / 2.0
    return _mel_filterbank_cached(int(sample_rate), int(n_fft), int(n_mels), float(fmin), float(fmax),
                                  bool(htk), norm)


@functools.lru_cache(maxsize=32)
def _mel_basis_mx(sample_rate, n_fft, n_mels, fmin, fmax, htk, norm) -> mx.array:
    """The filterbank transposed once for right-multiplication: (n_fft//2+1, n_mels)."""
    return mx.array(np.ascontiguousarray(mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax, htk, norm).T))


# ---------------------------------------------------------------------------------------------------------
# STFT magnitude (MLX)
# ---------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _window(window: str, win_length: int, n_fft: int) -> mx.array:
    """Periodic window as ``torch.hann_window(win_length)``, zero-padded to ``n_fft`` at the centre."""
    if window != "hann":
        raise ValueError(f"only the 'hann' window is supported, got {window!r}")
    n = np.arange(win_length, dtype=np.float64)
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / win_length)
    left = (n_fft - win_length) // 2
    full = np.zeros(n_fft, dtype=np.float64)
    full[left : left + win_length] = w
    return mx.array(full.astype(np.float32))


def frame_count(n_samples: int, n_fft: int, hop_length: int, center: bool) -> int:
    """Frames of an STFT of ``n_samples`` samples."""
    pad = n_fft // 2 if center else 0
    if n_samples + 2 * pad < n_fft:
        raise ValueError(f"signal of {n_samples} samples is shorter than one frame of {n_fft}")
    return 1 + (n_samples + 2 * pad - n_fft) // hop_length


def _frame_indices(n_samples: int, n_fft: int, hop_length: int, center: bool, pad_mode: str,
                   frames: range | None = None) -> np.ndarray:
    """(frames, n_fft) int32 indices into the signal, with the centre padding folded into the indices.

    ``frames``: which frames (default: all). Index ``n_samples`` points to an appended zero
    (``pad_mode="constant"``).
    """
    pad = n_fft // 2 if center else 0
    if frames is None:
        frames = range(frame_count(n_samples, n_fft, hop_length, center))
    starts = np.arange(frames.start, frames.stop)[:, None] * hop_length
    pos = (starts + np.arange(n_fft)[None, :]) - pad  # (frames, n_fft)
    if pad:
        if pad_mode == "reflect":
            if n_samples <= pad:
                raise ValueError(f"reflect padding of {pad} needs more than {pad} samples, got {n_samples}")
            pos = np.abs(pos)
            pos = np.where(pos >= n_samples, 2 * (n_samples - 1) - pos, pos)
        elif pad_mode == "replicate":
            pos = np.clip(pos, 0, n_samples - 1)
        elif pad_mode == "constant":
            pos = np.where((pos < 0) | (pos >= n_samples), n_samples, pos)
        else:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
    return pos.astype(np.int32)


def stft_magnitude(
    x: mx.array,
    n_fft: int,
    hop_length: int,
    win_length: int | None = None,
    window: str = "hann",
    center: bool = True,
    pad_mode: str = "reflect",
    frames: range | None = None,
) -> mx.array:
    """|STFT| as ``torch.stft(..., return_complex=True).abs()``.

    Args:
        x: (B, N) or (N,) float32 signal.
        frames: compute only these frames (default: all, 1 + N // hop_length when ``center``).
    Returns:
        (B, frames, n_fft // 2 + 1) float32.
    """
    win_length = n_fft if win_length is None else win_length
    if win_length > n_fft:
        raise ValueError(f"win_length {win_length} > n_fft {n_fft}")
    x = mx.array(x) if not isinstance(x, mx.array) else x
    if x.ndim == 1:
        x = x[None]
    x = x.astype(mx.float32)
    n = x.shape[-1]
    idx = _frame_indices(n, n_fft, hop_length, center, pad_mode, frames)
    if center and pad_mode == "constant":
        x = mx.concatenate([x, mx.zeros((x.shape[0], 1), dtype=x.dtype)], axis=-1)
    frames = x[:, mx.array(idx)] * _window(window, win_length, n_fft)  # (B, frames, n_fft)
    spec = mx.fft.rfft(frames, axis=-1)  # (B, frames, n_fft//2+1) complex64
    return mx.sqrt(mx.real(spec) ** 2 + mx.imag(spec) ** 2)


# ---------------------------------------------------------------------------------------------------------
# Log-mel
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MelConfig:
    """One log-mel front end: log(clamp(mel_basis @ |STFT|, clamp))."""

    sample_rate: int  # Hz of the input signal
    n_fft: int  # FFT size in samples
    hop_length: int  # samples between frames
    win_length: int  # Hann window length in samples (<= n_fft, centred)
    n_mels: int  # number of mel bands
    fmin: float = 0.0  # lowest band edge, Hz
    fmax: float | None = None  # highest band edge, Hz (None: sample_rate / 2)
    htk: bool = False  # HTK mel formula instead of the Slaney scale
    norm: str | None = "slaney"  # filterbank normalisation: "slaney" or None
    clamp: float = 1e-5  # floor applied before the log
    center: bool = True  # pad n_fft // 2 on both sides so frame t is centred at t * hop_length
    pad_mode: str = "reflect"  # how the centre padding is filled: reflect / constant / replicate

    def filterbank(self) -> np.ndarray:
        """(n_mels, n_fft // 2 + 1) float32, cached."""
        return mel_filterbank(self.sample_rate, self.n_fft, self.n_mels, self.fmin, self.fmax, self.htk,
                              self.norm)


MEL_FRAME_BLOCK = 8192  # frames per block of a long mel spectrogram (its frames and spectrum stay ~70 MB)


def mel_spectrogram(x: mx.array, config: MelConfig) -> mx.array:
    """Linear-magnitude mel spectrogram: (B, N) -> (B, frames, n_mels).

    Long signals go in blocks of `MEL_FRAME_BLOCK` frames, each evaluated before the next is built, so the
    framed signal and its spectrum never exist whole (frames are independent: the result is the same)."""
    fmax = config.sample_rate / 2.0 if config.fmax is None else config.fmax
    basis = _mel_basis_mx(int(config.sample_rate), int(config.n_fft), int(config.n_mels), float(config.fmin),
                          float(fmax), bool(config.htk), config.norm)
    total = frame_count(x.shape[-1], config.n_fft, config.hop_length, config.center)
    blocks = []
    for first in range(0, total, MEL_FRAME_BLOCK):
        frames = range(first, min(first + MEL_FRAME_BLOCK, total))
        mag = stft_magnitude(x, config.n_fft, config.hop_length, config.win_length, "hann", config.center,
                             config.pad_mode, frames)  # (B, frames, n_freqs)
        blocks.append(mag @ basis)  # (B, frames, n_mels)
        if total > MEL_FRAME_BLOCK:
            mx.eval(blocks[-1])
    return blocks[0] if len(blocks) == 1 else mx.concatenate(blocks, axis=1)


def log_mel_spectrogram(x: mx.array, config: MelConfig) -> mx.array:
    """log(max(mel, clamp)): (B, N) -> (B, frames, n_mels) float32."""
    return mx.log(mx.maximum(mel_spectrogram(x, config), config.clamp))
