"""The conversion pipeline's signal steps around the networks, as RVC's reference pipeline does them.

All on numpy, vectorised over samples and frames; each function names the reference step it reproduces
(``rvc/modules/vc/pipeline.py`` and ``modules.py`` of rvc 0.3.5). Rates: 16 kHz analysis signal, 100 pitch
frames per second (``HOP_LENGTH`` samples each).
"""

from __future__ import annotations

import numpy as np
from scipy import signal

from rvc_mlx.pitch import F0_MAX_HZ, F0_MIN_HZ
from rvc_mlx.pitch import PITCH_HOP_LENGTH as HOP_LENGTH  # samples of 16 kHz audio per pitch frame
from rvc_mlx.pitch import PITCH_SAMPLE_RATE as ANALYSIS_SAMPLE_RATE  # HuBERT and the f0 methods read 16 kHz

INPUT_PEAK = 0.95  # louder inputs are scaled down to this peak before conversion
OUTPUT_PEAK = 0.99  # outputs louder than this are scaled down to it

# 5th-order Butterworth high-pass at 48 Hz, applied forward and backward (zero phase).
_HIGHPASS_B, _HIGHPASS_A = signal.butter(N=5, Wn=48, btype="high", fs=ANALYSIS_SAMPLE_RATE)


def limit_input_peak(audio: np.ndarray) -> np.ndarray:
    """Scale ``audio`` down so its peak is at most 0.95 (a copy; quieter audio is returned unchanged)."""
    peak = np.abs(audio).max() / INPUT_PEAK
    return audio / peak if peak > 1 else audio


def high_pass(audio: np.ndarray) -> np.ndarray:
    """Zero-phase 48 Hz high-pass of 16 kHz audio (float64 out, as ``scipy.signal.filtfilt`` gives)."""
    return signal.filtfilt(_HIGHPASS_B, _HIGHPASS_A, audio)


def split_points(audio: np.ndarray, *, query: int, center: int, limit: int) -> list[int]:
    """Where a long input is cut into chunks: the quietest sample near every ``center`` samples.

    ``audio`` is the high-passed 16 kHz signal; ``query``, ``center`` and ``limit`` are sample counts
    (RVC's ``t_query``, ``t_center``, ``t_max``). Inputs whose hop-padded length is at most ``limit`` are
    not split. Quietness is the sum of |x| over one hop, summed in the reference's order, but only in
    the windows that are searched (bit-identical values, a fraction of the work).
    """
    half = HOP_LENGTH // 2
    padded = np.pad(audio, (half, half), mode="reflect")
    if padded.shape[0] <= limit:
        return []
    magnitude = np.abs(padded)
    points = []
    for t in range(center, audio.shape[0], center):
        lo, hi = max(t - query, 0), min(t + query, audio.shape[0])
        window_sum = np.zeros(hi - lo, dtype=magnitude.dtype)
        for i in range(HOP_LENGTH):  # the hop's taps, each a vector add over the window
            window_sum += magnitude[lo + i : hi + i]
        # The reference indexes from t - query even where that is negative (a wrapped slice): only
        # possible when query > center, which no RVC configuration uses.
        points.append(t - query + int(np.flatnonzero(window_sum == window_sum.min())[0]))
    return points


def coarse_pitch(f0_hz: np.ndarray) -> np.ndarray:
    """RVC's pitch embedding index: mel-scaled f0 mapped onto 1..255, unvoiced (0 Hz) -> 1. int32."""
    mel_min = 1127 * np.log(1 + F0_MIN_HZ / 700)
    mel_max = 1127 * np.log(1 + F0_MAX_HZ / 700)
    f0_mel = 1127 * np.log(1 + f0_hz / 700)
    voiced = f0_mel > 0
    f0_mel[voiced] = (f0_mel[voiced] - mel_min) * 254 / (mel_max - mel_min) + 1
    f0_mel[f0_mel <= 1] = 1
    f0_mel[f0_mel > 255] = 255
    return np.rint(f0_mel).astype(np.int32)


def apply_f0_curve(f0_hz: np.ndarray, curve: np.ndarray, pad_frames: int) -> np.ndarray:
    """Replace f0 by a user curve of (time in s, f0 in Hz) rows, as the reference's ``f0_file``.

    The curve is sampled every 10 ms from its first time and written from frame ``pad_frames`` on
    (the frames of the reflect padding before the audio are left as estimated).
    """
    curve = np.asarray(curve, dtype=np.float32)
    frames_per_second = ANALYSIS_SAMPLE_RATE // HOP_LENGTH
    count = int(np.round((curve[:, 0].max() - curve[:, 0].min()) * frames_per_second + 1).astype("int16"))
    values = np.interp(np.arange(count), curve[:, 0] * 100, curve[:, 1])
    out = f0_hz.copy()
    span = out[pad_frames : pad_frames + len(values)].shape[0]
    out[pad_frames : pad_frames + len(values)] = values[:span]
    return out


def read_f0_curve(path) -> np.ndarray:
    """Read a pitch curve file: one ``time_s,f0_hz`` pair per line -> (N, 2) float32."""
    rows = [[float(v) for v in line.split(",")] for line in open(path).read().strip("\n").split("\n")]
    curve = np.asarray(rows, dtype=np.float32)
    if curve.ndim != 2 or curve.shape[1] != 2 or curve.shape[0] < 1:
        raise ValueError(f"{path}: expected lines of 'time_s,f0_hz'")
    return curve


def _frame_rms(audio: np.ndarray, frame_length: int) -> np.ndarray:
    """RMS of centred, zero-padded frames with hop ``frame_length // 2`` (librosa.feature.rms's)."""
    hop = frame_length // 2
    padded = np.pad(audio, (frame_length // 2, frame_length // 2), mode="constant")
    frames = np.lib.stride_tricks.sliding_window_view(padded, frame_length)[::hop].T  # (frame, n)
    return np.sqrt(np.mean(np.square(frames, dtype=np.float32), axis=-2))


MIX_BLOCK_SAMPLES = 1 << 16  # output samples per block in `mix_rms` (its temporaries stay in cache)


def _linear_resize(values: np.ndarray, size: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Linear interpolation to ``size`` points with half-pixel centres (no corner alignment), float32:
    points [start, stop) of it."""
    n = values.shape[0]
    scale = np.float32(n / size)
    stop = size if stop is None else stop
    src = (np.arange(start, stop, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0))
    left = np.minimum(src.astype(np.int64), n - 1)
    right = np.minimum(left + 1, n - 1)
    frac = src - left.astype(np.float32)
    return (np.float32(1) - frac) * values[left] + frac * values[right]


def mix_rms(source: np.ndarray, source_rate: int, output: np.ndarray, output_rate: int,
            rate: float) -> np.ndarray:
    """Blend the output's loudness envelope toward the source's (``rms_mix_rate``; 1 keeps the output's).

    Envelopes are RMS over half-second frames, interpolated to every output sample; the output is
    multiplied by rms_src**(1-rate) * rms_out**(rate-1). Returns a new float32 array. Computed in blocks of
    `MIX_BLOCK_SAMPLES` (the same float32 operations per sample; 4-10x faster than whole-signal passes on
    minutes of audio).
    """
    rms_src = _frame_rms(source, source_rate // 2 * 2)
    rms_out = _frame_rms(output, output_rate // 2 * 2)
    size = output.shape[0]
    mixed = np.empty(size, dtype=np.float32)
    for start in range(0, size, MIX_BLOCK_SAMPLES):
        stop = min(start + MIX_BLOCK_SAMPLES, size)
        env_src = _linear_resize(rms_src, size, start, stop)
        env_out = np.maximum(_linear_resize(rms_out, size, start, stop), np.float32(1e-6))
        gain = np.power(env_src, np.float32(1 - rate)) * np.power(env_out, np.float32(rate - 1))
        mixed[start:stop] = output[start:stop] * gain
    return mixed


def limit_output_peak(audio: np.ndarray) -> np.ndarray:
    """Scale down to a 0.99 peak if louder (float32; the reference then writes 16-bit PCM)."""
    peak = np.abs(audio).max() / OUTPUT_PEAK
    return (audio / peak).astype(np.float32) if peak > 1 else audio.astype(np.float32)
