"""The neural-source-filter excitation of RVC's pitch decoder: upstream `SineGen` + `SourceModuleHnNSF`.

f0 at frame rate becomes a sine at sample rate (`upp` samples per frame). The reference computes its phase as
a running sum over every sample of per-sample increments f0/sr, minus 1 wherever its linearly upsampled
frame-rate phase wraps past an integer. torch's CPU `cumsum` accumulates float32 in float64 and rounds each
output, so a plain float32 running sum over 10^5..10^6 samples would drift by ~1e-3 cycles.

Two ways to get the same phase:

* exact (the default on the CPU device): the reference's float arithmetic step by step: float64 running sums
  rounded to float32, the `align_corners=True` interpolation with torch's float32 source positions and its
  fused multiply-add, nearest upsampling with torch's float32 source index. Matches torch's CPU result to
  the last bit except for `sin` (measured max error 1.5e-8 on a 0.1-amplitude sine over 800k samples).
* by frames (the default on GPU back ends, which have no float64): float64 only for the T frame-start phases
  (on the CPU stream, T values), then per sample in float32: frame-start phase + samples so far in the frame ·
  increment − wraps so far in the frame, with the interpolation's fused multiply-add emulated in float32.
  Error a few float32 ulps of the in-frame phase (~1e-6 cycles).
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np

SINE_AMP = 0.1  # amplitude of the voiced sine excitation
NOISE_STD = 0.003  # std of the additive noise on voiced samples (unvoiced: SINE_AMP / 3)
VOICED_THRESHOLD = 0.0  # f0 above this (Hz) counts as voiced
HARMONICS = 0  # overtones above f0 in RVC's source (the source is one sine)


def _nearest_source_index(frames: int, upp: int) -> mx.array:
    """(N,) int32 frame of each sample under torch's nearest upsampling: floor(fl32(n) · fl32(1/upp))."""
    n = frames * upp
    src = mx.floor(mx.arange(n, dtype=mx.float32) * mx.array(np.float32(1.0 / upp)))
    return mx.minimum(src.astype(mx.int32), frames - 1)


def _fused_multiply_add(a: mx.array, b: mx.array, c: mx.array) -> mx.array:
    """fl32(a·b + c) with a·b exact, in float32 only: Dekker's two-product and Knuth's two-sum.

    Each step is a separate MLX op (do not `mx.compile` this: contracting them would change the result).
    """

    def split(x: mx.array) -> tuple[mx.array, mx.array]:  # Veltkamp: x = hi + lo, 12 bits each
        scaled = x * 4097.0
        hi = scaled - (scaled - x)
        return hi, x - hi

    product = a * b
    a_hi, a_lo = split(a)
    b_hi, b_lo = split(b)
    product_err = ((a_hi * b_hi - product) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo  # a·b − product
    total = product + c
    back = total - product
    total_err = (product - (total - back)) + (c - back)  # product + c − total
    return total + (total_err + product_err)


def _phase_wraps(cum_phase: mx.array, upp: int, exact: bool) -> mx.array:
    """Where the reference's linearly upsampled running phase drops (wraps past an integer).

    cum_phase: (B, T, D) float32 frame-rate running phase (cycles, already multiplied by upp).
    Returns (B, T·upp, D) bool, True at samples n >= 1 whose upsampled phase mod 1 is below sample n − 1's.
    Follows `F.interpolate(mode="linear", align_corners=True)` on torch's CPU: source position
    n · fl32((T−1)/(T·upp−1)) in float32, weights w1 = clamp(pos − floor(pos), 0, 1), w0 = 1 − w1, result
    fl32(x0·w0 + fl32(x1·w1)) with the first product exact (a fused multiply-add, emulated in float64 when
    `exact`, else in float32 arithmetic). It must be this rounding: where f0 is 0 the phase is flat and a
    plain float32 x0·w0 + x1·w1 jitters by an ulp, each downward jitter adding a spurious wrap.
    """
    b, t, d = cum_phase.shape
    n = t * upp
    scale = np.float32(t - 1) / np.float32(n - 1) if n > 1 else np.float32(0)
    pos = mx.arange(n, dtype=mx.float32) * mx.array(scale, dtype=mx.float32)  # (N,)
    i0 = mx.minimum(mx.floor(pos).astype(mx.int32), t - 1)
    w1 = mx.clip(pos - i0.astype(mx.float32), 0.0, 1.0)
    w0 = 1.0 - w1
    i1 = i0 + (i0 < t - 1).astype(mx.int32)
    x0 = cum_phase[:, i0]  # (B, N, D)
    x1 = cum_phase[:, i1]
    tail = x1 * w1[:, None]
    if exact:
        up = x0.astype(mx.float64) * w0[:, None].astype(mx.float64) + tail.astype(mx.float64)
        up = up.astype(mx.float32)
    else:
        up = _fused_multiply_add(x0, w0[:, None], tail)
    up = up - mx.floor(up)  # % 1 (exact for float32)
    drops = up[:, 1:] < up[:, :-1]  # (B, N−1, D)
    return mx.concatenate([mx.zeros((b, 1, d), dtype=mx.bool_), drops], axis=1)


def _phase_exact(rad: mx.array, wraps: mx.array, src: mx.array) -> mx.array:
    """The reference's per-sample running phase (B, N, D): float64 running sum of the float32 increments."""
    rad_up = rad[:, src]  # (B, N, D)
    step = mx.where(wraps, rad_up + (-1.0), rad_up)  # float32 increments, −1 at each wrap
    return mx.cumsum(step.astype(mx.float64), axis=1).astype(mx.float32)


def _phase_by_frames(rad: mx.array, wraps: mx.array, src: mx.array) -> mx.array:
    """The same running phase (B, N, D) with float64 only at frame rate (see the module docstring).

    Every sample of frame f adds r_f, or fl32(r_f − 1) at a wrap, so the sum over frame f is
    (count_f − wraps_f)·r_f + wraps_f·fl32(r_f − 1): exact in float64 from integer counts.
    """
    b, t, d = rad.shape
    n = src.shape[0]
    index = mx.arange(n, dtype=mx.int32)
    starts = mx.concatenate([mx.array([True]), src[1:] != src[:-1]])  # first sample of each frame
    first = mx.cummax(mx.where(starts, index, 0))  # (N,) first sample of this sample's frame
    in_frame = (index - first + 1).astype(mx.float32)  # samples of the frame so far, this one included
    w = wraps.astype(mx.int32)
    w_total = mx.cumsum(w, axis=1)  # (B, N, D) wraps up to and including n
    w_local = w_total - (w_total - w)[:, first]  # wraps within the frame so far
    counts = mx.zeros((t,), mx.int32).at[src].add(1)  # samples per frame
    w_frames = mx.zeros((b, t, d), mx.int32).at[:, src].add(w)  # wraps per frame
    rad_minus_one = rad + (-1.0)  # float32, as the reference's increment at a wrap
    with mx.stream(mx.cpu):
        r64, w64 = rad.astype(mx.float64), w_frames.astype(mx.float64)
        sums = (counts[:, None].astype(mx.float64) - w64) * r64 + w64 * rad_minus_one.astype(mx.float64)
        start_phase = (mx.cumsum(sums, axis=1) - sums).astype(mx.float32)  # (B, T, D) phase before frame f
    wl = w_local.astype(mx.float32)
    local = (in_frame[:, None] - wl) * rad[:, src] + wl * rad_minus_one[:, src]  # (B, N, D)
    return start_phase[:, src] + local


def sine_source(
    f0_hz: mx.array,
    upp: int,
    sample_rate: int,
    noise: mx.array | None = None,
    rand_phase: mx.array | None = None,
    harmonics: int = HARMONICS,
    exact: bool | None = None,
) -> mx.array:
    """The NSF excitation before `l_linear`: (B, T) f0 in Hz at frame rate -> (B, T·upp, harmonics+1).

    noise: (B, T·upp, harmonics+1) standard normal draws (upstream `randn_like`), or None for zeros.
    rand_phase: (B, harmonics+1) uniform [0, 1) initial phases (upstream `rand`; the fundamental's is zeroed
    as upstream does), or None for zeros. exact: phase method (module docstring); None = exact on the CPU
    device. Voiced samples: 0.1·sin(2π·phase) + 0.003·noise; unvoiced: 0.1/3·noise.
    """
    if exact is None:
        exact = mx.default_device() == mx.cpu
    b, t = f0_hz.shape
    dim = harmonics + 1
    n = t * upp
    f0 = f0_hz.astype(mx.float32)[..., None]  # (B, T, 1)
    f0_buf = f0 * mx.arange(1, dim + 1, dtype=mx.float32) if dim > 1 else f0  # (B, T, D)
    rad = f0_buf / sample_rate
    rad = rad - mx.floor(rad)  # % 1: phase increment per sample, cycles
    if rand_phase is not None:
        first = rand_phase.astype(mx.float32) * (mx.arange(dim) > 0)  # fundamental starts at phase 0
        rad = mx.concatenate([rad[:, :1] + first[:, None, :], rad[:, 1:]], axis=1)
    with mx.stream(mx.cpu):
        cum = mx.cumsum(rad.astype(mx.float64), axis=1).astype(mx.float32)  # (B, T, D)
    cum = cum * upp
    src = _nearest_source_index(t, upp)  # (N,)
    if exact:
        with mx.stream(mx.cpu):
            phase = _phase_exact(rad, _phase_wraps(cum, upp, exact=True), src)
    else:
        phase = _phase_by_frames(rad, _phase_wraps(cum, upp, exact=False), src)
    sine = mx.sin(phase * 2.0 * np.float32(math.pi)) * np.float32(SINE_AMP)

    uv = (f0 > VOICED_THRESHOLD).astype(mx.float32)[:, src]  # (B, N, 1)
    if noise is None:
        return sine * uv
    noise_amp = uv * np.float32(NOISE_STD) + (1.0 - uv) * np.float32(SINE_AMP) / 3
    return sine * uv + noise_amp * noise.astype(mx.float32).reshape(b, n, dim)


class SourceModuleHnNSF(nn.Module):
    """`m_source`: the sine excitation merged to one channel by `l_linear` and tanh. -> (B, T·upp, 1)."""

    def __init__(self, sample_rate: int, harmonics: int = HARMONICS):
        super().__init__()
        self.sample_rate = sample_rate  # Hz, for the phase increments
        self.harmonics = harmonics  # overtones above f0
        self.l_linear = nn.Linear(harmonics + 1, 1)

    def __call__(
        self, f0_hz: mx.array, upp: int, noise: mx.array | None, rand_phase: mx.array | None
    ) -> mx.array:
        sine = sine_source(f0_hz, upp, self.sample_rate, noise, rand_phase, self.harmonics)
        return mx.tanh(self.l_linear(sine))
