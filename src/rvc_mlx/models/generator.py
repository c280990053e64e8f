"""RVC's decoder `dec`: HiFi-GAN, with the neural-source-filter (NSF) harmonic source for pitch models.

`Generator(..., sample_rate=None)` is upstream's plain `Generator` (no-pitch voices);
`Generator(..., sample_rate=sr)` is `GeneratorNSF`: a sine excitation from f0 (`sine_source`, upstream's
`SineGen` + `SourceModuleHnNSF`), downsampled by `noise_convs` and added after every upsampling stage.
Channels-last throughout; submodule names equal the upstream state-dict names (`ups.0`,
`resblocks.3.convs1.1`, `m_source.l_linear`, `noise_convs.2`, `cond`, ...).

The sine source reproduces the reference's float arithmetic step by step: the per-frame phase increments are
accumulated in float64 and rounded to float32 (as torch's CPU `cumsum` does), the linear upsampling of the
accumulated phase uses torch's `align_corners=True` source indices and weights, and the per-sample phase is
again a float64 running sum. A float32 running sum over hundreds of thousands of samples would drift by
~1e-3 cycles. These float64 steps run on the CPU stream (MLX's GPU back ends have no float64).
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from rvc_mlx.models.conv import Conv1d, ConvTranspose1d
from rvc_mlx.models.text_encoder import LRELU_SLOPE

SINE_AMP = 0.1  # amplitude of the voiced sine excitation
NOISE_STD = 0.003  # std of the additive noise on voiced samples (unvoiced: SINE_AMP / 3)
VOICED_THRESHOLD = 0.0  # f0 above this (Hz) counts as voiced
HARMONICS = 0  # overtones above f0 in RVC's source (the source is one sine)
FINAL_LRELU_SLOPE = 0.01  # the generator's last leaky ReLU uses torch's default slope


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    """'Same' padding of an odd kernel with the given dilation."""
    return (kernel_size * dilation - dilation) // 2


def _upsampled_phase_wraps(cum_phase: mx.array, upp: int) -> mx.array:
    """Where the reference's linearly upsampled running phase drops (wraps past an integer).

    cum_phase: (B, T, D) float32, the frame-rate running phase (cycles, already multiplied by upp).
    Returns (B, T·upp, D) bool, True at samples n >= 1 whose upsampled phase mod 1 is below sample n − 1's.
    Reproduces `F.interpolate(mode="linear", align_corners=True)` on torch's CPU: source position
    i · fl32((T−1)/(T·upp−1)) in float32, weights w1 = clamp(pos − floor(pos), 0, 1), w0 = 1 − w1, and the
    result fl32(x0·w0 + fl32(x1·w1)) with the first product exact (fused multiply-add, emulated in float64).
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
    tail = (x1 * w1[:, None]).astype(mx.float64)
    up = (x0.astype(mx.float64) * w0[:, None].astype(mx.float64) + tail).astype(mx.float32)
    up = up - mx.floor(up)  # % 1 (exact for float32)
    drops = up[:, 1:] < up[:, :-1]  # (B, N−1, D)
    return mx.concatenate([mx.zeros((b, 1, d), dtype=mx.bool_), drops], axis=1)


def sine_source(
    f0_hz: mx.array,
    upp: int,
    sample_rate: int,
    noise: mx.array | None = None,
    rand_phase: mx.array | None = None,
    harmonics: int = HARMONICS,
) -> mx.array:
    """The NSF excitation before `l_linear`: (B, T) f0 in Hz at frame rate -> (B, T·upp, harmonics+1).

    noise: (B, T·upp, harmonics+1) standard normal draws (upstream `randn_like`), or None for zeros.
    rand_phase: (B, harmonics+1) uniform [0, 1) initial phases (upstream `rand`; the fundamental's is zeroed
    as upstream does), or None for zeros.
    Voiced samples: 0.1·sin(2π·phase) + 0.003·noise; unvoiced: 0.1/3·noise.
    """
    with mx.stream(mx.cpu):
        b, t = f0_hz.shape
        dim = harmonics + 1
        f0 = f0_hz.astype(mx.float32)[..., None]  # (B, T, 1)
        f0_buf = f0 * mx.arange(1, dim + 1, dtype=mx.float32) if dim > 1 else f0  # (B, T, D)
        rad = f0_buf / sample_rate
        rad = rad - mx.floor(rad)  # % 1: phase increment per sample, cycles
        if rand_phase is not None:
            first = rand_phase.astype(mx.float32) * (mx.arange(dim) > 0)  # fundamental starts at phase 0
            rad = mx.concatenate([rad[:, :1] + first[:, None, :], rad[:, 1:]], axis=1)
        cum = mx.cumsum(rad.astype(mx.float64), axis=1).astype(mx.float32) * upp  # (B, T, D)
        wraps = _upsampled_phase_wraps(cum, upp)  # (B, N, D)

        n = t * upp
        # nearest upsampling with torch's float32 source index floor(i · fl32(1/upp))
        src = mx.floor(mx.arange(n, dtype=mx.float32) * mx.array(np.float32(1.0 / upp)))
        src = mx.minimum(src.astype(mx.int32), t - 1)  # (N,)
        rad_up = rad[:, src]  # (B, N, D)
        step = mx.where(wraps, rad_up + (-1.0), rad_up)  # float32 increments, −1 at each wrap
        phase = mx.cumsum(step.astype(mx.float64), axis=1).astype(mx.float32)
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


class ResBlock1(nn.Module):
    """HiFi-GAN MRF block type 1: three (dilated conv, conv) pairs with residuals. (B, T, C) -> same."""

    def __init__(self, channels: int, kernel_size: int, dilation: tuple[int, ...]):
        super().__init__()
        self.convs1 = [
            Conv1d(channels, channels, kernel_size, dilation=d, padding=get_padding(kernel_size, d))
            for d in dilation
        ]
        self.convs2 = [
            Conv1d(channels, channels, kernel_size, padding=get_padding(kernel_size)) for _ in dilation
        ]

    def __call__(self, x: mx.array) -> mx.array:
        for c1, c2 in zip(self.convs1, self.convs2, strict=True):
            xt = c1(nn.leaky_relu(x, LRELU_SLOPE))
            xt = c2(nn.leaky_relu(xt, LRELU_SLOPE))
            x = xt + x
        return x


class ResBlock2(nn.Module):
    """HiFi-GAN MRF block type 2: dilated convs with residuals. (B, T, C) -> same."""

    def __init__(self, channels: int, kernel_size: int, dilation: tuple[int, ...]):
        super().__init__()
        self.convs = [
            Conv1d(channels, channels, kernel_size, dilation=d, padding=get_padding(kernel_size, d))
            for d in dilation
        ]

    def __call__(self, x: mx.array) -> mx.array:
        for c in self.convs:
            x = c(nn.leaky_relu(x, LRELU_SLOPE)) + x
        return x


class Generator(nn.Module):
    """HiFi-GAN `dec`: latent (B, T, C_in) [+ f0 (B, T) Hz] -> waveform (B, T·prod(upsample_rates), 1)."""

    def __init__(
        self,
        initial_channel: int,
        resblock: str,
        resblock_kernel_sizes: tuple[int, ...],
        resblock_dilation_sizes: tuple[tuple[int, ...], ...],
        upsample_rates: tuple[int, ...],
        upsample_initial_channel: int,
        upsample_kernel_sizes: tuple[int, ...],
        gin_channels: int,
        sample_rate: int | None = None,
    ):
        super().__init__()
        self.num_kernels = len(resblock_kernel_sizes)  # resblocks averaged per stage
        self.upp = math.prod(upsample_rates)  # output samples per input frame
        self.nsf = sample_rate is not None  # pitch model: add the harmonic source
        block = ResBlock1 if resblock == "1" else ResBlock2
        if self.nsf:
            self.m_source = SourceModuleHnNSF(sample_rate)
            self.noise_convs = []
        self.conv_pre = Conv1d(initial_channel, upsample_initial_channel, 7, padding=3)
        self.ups = []
        self.resblocks = []
        for i, (u, k) in enumerate(zip(upsample_rates, upsample_kernel_sizes, strict=True)):
            c_in, c_out = upsample_initial_channel // 2**i, upsample_initial_channel // 2 ** (i + 1)
            self.ups.append(ConvTranspose1d(c_in, c_out, k, stride=u, padding=(k - u) // 2))
            if self.nsf:
                if i + 1 < len(upsample_rates):
                    s = math.prod(upsample_rates[i + 1 :])  # source samples per output sample of this stage
                    self.noise_convs.append(Conv1d(1, c_out, 2 * s, stride=s, padding=s // 2))
                else:
                    self.noise_convs.append(Conv1d(1, c_out, 1))
            for rk, rd in zip(resblock_kernel_sizes, resblock_dilation_sizes, strict=True):
                self.resblocks.append(block(c_out, rk, tuple(rd)))
        self.conv_post = Conv1d(c_out, 1, 7, padding=3, bias=False)
        if gin_channels:
            self.cond = Conv1d(gin_channels, upsample_initial_channel, 1)

    def __call__(
        self,
        x: mx.array,
        g: mx.array | None,
        f0_hz: mx.array | None = None,
        sine_noise: mx.array | None = None,
        rand_phase: mx.array | None = None,
    ) -> mx.array:
        """x: (B, T, C_in); g: (B, 1, gin) or None; f0_hz: (B, T) for NSF models; sine_noise (B, T·upp) and
        rand_phase (B, 1): the source's random draws (None: zeros) -> waveform (B, T·upp, 1) in [−1, 1]."""
        source = None
        if self.nsf:
            if f0_hz is None:
                raise ValueError("this voice needs f0 in Hz (f0=1)")
            source = self.m_source(f0_hz, self.upp, sine_noise, rand_phase)  # (B, T·upp, 1)
        x = self.conv_pre(x)
        if g is not None:
            x = x + self.cond(g)
        for i, up in enumerate(self.ups):
            x = up(nn.leaky_relu(x, LRELU_SLOPE))
            if source is not None:
                x = x + self.noise_convs[i](source)
            xs = None
            for block in self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]:
                xs = block(x) if xs is None else xs + block(x)
            x = xs / self.num_kernels
        x = self.conv_post(nn.leaky_relu(x, FINAL_LRELU_SLOPE))
        return mx.tanh(x)
