"""RVC's decoder `dec`: HiFi-GAN, with the neural-source-filter (NSF) harmonic source for pitch models.

`Generator(..., sample_rate=None)` is upstream's plain `Generator` (no-pitch voices);
`Generator(..., sample_rate=sr)` is `GeneratorNSF`: a sine excitation from f0 (`nsf_source`), downsampled by
`noise_convs` and added after every upsampling stage. Channels-last throughout; submodule names equal the
upstream state-dict names (`ups.0`, `resblocks.3.convs1.1`, `m_source.l_linear`, `noise_convs.2`, `cond`).
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from rvc_mlx.models.conv import Conv1d, ConvTranspose1d
from rvc_mlx.models.nsf_source import SourceModuleHnNSF
from rvc_mlx.models.text_encoder import LRELU_SLOPE

FINAL_LRELU_SLOPE = 0.01  # the generator's last leaky ReLU uses torch's default slope


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    """'Same' padding of an odd kernel with the given dilation."""
    return (kernel_size * dilation - dilation) // 2


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
