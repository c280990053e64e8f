"""RVC's decoder `dec`: HiFi-GAN, with the neural-source-filter (NSF) harmonic source for pitch models.

`Generator(..., sample_rate=None)` is upstream's plain `Generator` (no-pitch voices);
`Generator(..., sample_rate=sr)` is `GeneratorNSF`: a sine excitation from f0 (`nsf_source`), downsampled by
`noise_convs` and added after every upsampling stage. Channels-last throughout; submodule names equal the
upstream state-dict names (`ups.0`, `resblocks.3.convs1.1`, `m_source.l_linear`, `noise_convs.2`, `cond`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import mlx.core as mx
import mlx.nn as nn

from rvc_mlx.models.conv import (
    Conv1d,
    ConvTranspose1d,
    Steps,
    cpu_streams,
    run_lockstep,
    run_steps,
    use_cpu_path,
)
from rvc_mlx.models.nsf_source import SourceModuleHnNSF
from rvc_mlx.models.text_encoder import LRELU_SLOPE

FINAL_LRELU_SLOPE = 0.01  # the generator's last leaky ReLU uses torch's default slope


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    """'Same' padding of an odd kernel with the given dilation."""
    return (kernel_size * dilation - dilation) // 2


@dataclass(frozen=True)
class ChunkPlan:
    """How each upsampling stage of the decoder is cut into time chunks (see `Generator`)."""

    elements: int = 1 << 18  # samples × channels of a chunk (its length in samples is this ÷ channels)
    min_length: int = 512  # shortest chunk, samples (each chunk also recomputes a halo of ~60 each side)


# GPU back ends: each stage in chunks of a fixed length (`_fixed_length`) evaluated one after the other. That
# bounds the decoder's memory and its convolutions see a few shapes whatever the input lengths, so MLX's
# cuDNN plan cache keeps hitting across recordings of different lengths. Decoder alone, v2 48 kHz, 60 s, H100
# (peak memory above the weights / time): one pass 41.2 GiB / 0.31 s; chunks of 2^22 elements 2.5 GiB /
# 0.43 s; 2^24 7.3 GiB / 0.40 s; 2^26 26.7 GiB / 0.45 s.
GPU_CHUNK_PLAN = ChunkPlan(elements=1 << 22, min_length=4096)


def _fixed_length(total: int, longest: int) -> int:
    """Chunk length for `total` samples at most `longest` per chunk: `longest`, or for a shorter signal the
    smallest m·2^k ≥ total with m in 4..7 (a quarter-octave grid: few distinct shapes, ≤ 25 % overrun)."""
    if total >= longest:
        return longest
    k = max(0, (total - 1).bit_length() - 3)
    return min(longest, -(-total // (1 << k)) << k)


def _lrelu(x: mx.array, slope: float) -> mx.array:
    return mx.maximum(x, x * slope)


@partial(mx.compile, shapeless=True)
def _residual(y: mx.array, x: mx.array) -> tuple[mx.array, mx.array]:
    """A residual block's sum y + x and its leaky ReLU (the next convolution's input), in one pass."""
    total = y + x
    return total, _lrelu(total, LRELU_SLOPE)


@partial(mx.compile, shapeless=True)
def _average(ys: list[mx.array]) -> mx.array:
    """leaky_relu((y_0 + y_1 + ...) / n), the stage output as the next stage's input, in one pass."""
    total = ys[0]
    for y in ys[1:]:
        total = total + y
    return _lrelu(total / len(ys), LRELU_SLOPE)


def _zero_outside(y: mx.array, start: int, total: int) -> mx.array:
    """y: (B, L, C), samples [start, start + L) of a signal that is zero outside [0, total)."""
    n = y.shape[1]
    lo, hi = max(0, -start), min(n, total - start)
    if lo == 0 and hi == n:
        return y
    return mx.pad(y[:, lo:hi], [(0, 0), (lo, n - hi), (0, 0)])


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

    @property
    def reach(self) -> int:
        """Input samples on each side that one output sample depends on."""
        return sum(c1.padding + c2.padding for c1, c2 in zip(self.convs1, self.convs2, strict=True))

    def valid(self, x: mx.array, start: int, total: int) -> mx.array:
        """The block on a piece of its input, without padding (the chunked routes).

        x: (B, L, C), samples [start, start + L) of an input that is zero outside [0, total) ->
        (B, L − 2·reach, C), the output on [start + reach, start + L − reach).
        """
        return run_steps(self.steps(x, start, total))

    def steps(self, x: mx.array, start: int, total: int) -> Steps:
        """`valid` as a step generator (see `conv.run_lockstep`): one step per convolution, each yielding the
        next convolution's (activated) input."""
        act = nn.leaky_relu(x, LRELU_SLOPE)
        for n, (c1, c2) in enumerate(zip(self.convs1, self.convs2, strict=True)):
            shift = c1.padding + c2.padding
            xt = _zero_outside(c1.valid(act), start + c1.padding, total)
            act = yield nn.leaky_relu(xt, LRELU_SLOPE)
            xt = _zero_outside(c2.valid(act), start + shift, total)
            x = x[:, shift : shift + xt.shape[1]]
            if n + 1 < len(self.convs1):
                x, act = _residual(xt, x)
                act = yield act
            else:
                x = yield xt + x
            start += shift
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

    @property
    def reach(self) -> int:
        """Input samples on each side that one output sample depends on."""
        return sum(c.padding for c in self.convs)

    def valid(self, x: mx.array, start: int, total: int) -> mx.array:
        """As `ResBlock1.valid`: (B, L, C) piece at `start` -> (B, L − 2·reach, C)."""
        return run_steps(self.steps(x, start, total))

    def steps(self, x: mx.array, start: int, total: int) -> Steps:
        """`valid` as a step generator (see `conv.run_lockstep`): one step per convolution, each yielding the
        next convolution's (activated) input."""
        act = nn.leaky_relu(x, LRELU_SLOPE)
        for n, c in enumerate(self.convs):
            xt = _zero_outside(c.valid(act), start + c.padding, total)
            x = x[:, c.padding : c.padding + xt.shape[1]]
            if n + 1 < len(self.convs):
                x, act = _residual(xt, x)
                act = yield act
            else:
                x = yield xt + x
            start += c.padding
        return x


class Generator(nn.Module):
    """HiFi-GAN `dec`: latent (B, T, C_in) [+ f0 (B, T) Hz] -> waveform (B, T·prod(upsample_rates), 1).

    On the CPU path (`conv.use_cpu_path()`) every upsampling stage (leaky ReLU, transposed conv, noise conv,
    the averaged residual blocks; in the last stage also `conv_post` and tanh) runs in time chunks of
    `chunk_plan` size, each computed from the stage input around it (a halo as wide as the blocks' reach)
    with unpadded convolutions, and zeroed outside the signal where the reference zero-pads. Chunks keep
    the working set in cache; they are dealt to one lane per CPU stream (`conv.cpu_streams`) and the lanes
    run in lockstep (`conv.run_lockstep`), so the cores work in parallel. On other back ends the stages take
    the same chunked route on the default stream with chunks of fixed, bucketed lengths (`gpu_chunk_plan`),
    one evaluated at a time, with the convolutions on `mx.conv1d` (bounded memory, few distinct shapes).
    """

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
        self.chunk_plan = ChunkPlan()  # CPU path: chunk sizes (not a parameter)
        self.gpu_chunk_plan = GPU_CHUNK_PLAN  # other back ends: chunk sizes (None: one pass)

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
            source = self.m_source(f0_hz, self.upp, sine_noise, rand_phase)  # (B, T·upp, 1), float32
            source = source.astype(self.conv_pre.weight.dtype)  # the noise convs' dtype
        x = self.conv_pre(x)
        if g is not None:
            x = x + self.cond(g)
        if use_cpu_path():
            return self._chunked(x, source, cpu_streams(), self.chunk_plan)
        if self.gpu_chunk_plan is not None:
            return self._chunked(x, source, [mx.default_stream(mx.default_device())], self.gpu_chunk_plan,
                                 fixed=True)
        for i, up in enumerate(self.ups):
            x = up(nn.leaky_relu(x, LRELU_SLOPE))
            if source is not None:
                x = x + self.noise_convs[i](source)
            xs = None
            for block in self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]:
                xs = block(x) if xs is None else xs + block(x)
            x = xs / self.num_kernels
        x = self.conv_post(nn.leaky_relu(x, FINAL_LRELU_SLOPE).astype(self.conv_post.weight.dtype))
        return mx.tanh(x)

    def _stage_blocks(self, i: int) -> list[nn.Module]:
        return self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]

    def _chunked(self, x: mx.array, source: mx.array | None, streams: Sequence[mx.Stream], plan: ChunkPlan,
                 fixed: bool = False) -> mx.array:
        """The upsampling stages in time chunks: x (B, T, C) after conv_pre -> (B, T·upp, 1). One lane of
        chunks per stream (equal chunks, as many as the lanes need); ``fixed`` (one stream): every chunk of a
        stage has the length `_fixed_length` gives, the last one computed past the end and cut, and each is
        evaluated before the next is built (bounded memory; convolution shapes independent of the length)."""
        halos, t_outs, lengths, t_in = [], [], [], x.shape[1]
        for i, up in enumerate(self.ups):
            post = self.conv_post.padding if i == len(self.ups) - 1 else 0
            halos.append(max(block.reach for block in self._stage_blocks(i)) + post)  # samples beyond a chunk
            t_in = (t_in - 1) * up.stride - 2 * up.padding + up.kernel_size + up.output_padding
            t_outs.append(t_in)
            if fixed:
                lengths.append(_fixed_length(t_in, max(plan.min_length, plan.elements // up.out_channels)))
            else:
                length = max(plan.min_length, plan.elements // up.out_channels)
                n_lanes = min(len(streams), -(-t_in // length))
                n_chunks = -(-t_in // (length * n_lanes)) * n_lanes  # equal work per lane
                lengths.append(-(-t_in // n_chunks))
        overrun = [-(-t // n) * n - t for t, n in zip(t_outs, lengths, strict=True)]  # past the end (fixed)
        pad_src = extra_src = 0
        if source is not None:  # zeros around the source, enough for every stage's noise conv
            convs = zip(halos, self.noise_convs, strict=True)
            pad_src = max((h + 2) * c.stride + c.kernel_size for h, c in convs)
            extra_src = max(o * c.stride for o, c in zip(overrun, self.noise_convs, strict=True))
            source = mx.pad(source, [(0, 0), (pad_src, pad_src + extra_src), (0, 0)])
        pads = [  # zero steps around each stage's input, enough for its chunks' halos
            -(-(up.kernel_size + up.output_padding + h) // up.stride) + 2
            for up, h in zip(self.ups, halos, strict=True)
        ]
        extra = [-(-o // up.stride) for o, up in zip(overrun, self.ups, strict=True)]  # input steps past it
        x = mx.pad(_lrelu(x, LRELU_SLOPE), [(0, 0), (pads[0], pads[0] + extra[0]), (0, 0)])
        for i, up in enumerate(self.ups):
            length, t_out = lengths[i], t_outs[i]
            starts = range(0, t_out, length)
            n_lanes = min(len(streams), len(starts))
            lanes = [
                self._lane(i, x, pads[i], source, pad_src, starts[k::n_lanes], length, t_out, halos[i], fixed)
                for k in range(n_lanes)
            ]
            per_lane = run_lockstep(lanes, streams[:n_lanes])
            chunks = [per_lane[n % n_lanes][n // n_lanes] for n in range(len(starts))]
            if i + 1 < len(self.ups):  # the next stage's padded input, in one copy
                b, c = x.shape[0], up.out_channels
                chunks = [mx.zeros((b, pads[i + 1], c), x.dtype), *chunks,
                          mx.zeros((b, pads[i + 1] + extra[i + 1], c), x.dtype)]
            x = mx.concatenate(chunks, axis=1) if len(chunks) > 1 else chunks[0]
        return x

    def _lane(self, i: int, x: mx.array, pad: int, source: mx.array | None, pad_src: int,
              starts: Sequence[int], length: int, total: int, halo: int, fixed: bool) -> Steps:
        """Stage i's chunks starting at `starts`, one after the other, as one step generator -> their list."""
        outs = []
        for start in starts:
            stop = start + length if fixed else min(start + length, total)
            out = yield from self._chunk(i, x, pad, source, pad_src, start, stop, total, halo)
            if fixed:
                out = out[:, : total - start] if stop > total else out
                mx.eval(out)
            outs.append(out)
        return outs

    def _chunk(
        self,
        i: int,
        x: mx.array,
        pad: int,
        source: mx.array | None,
        pad_src: int,
        start: int,
        stop: int,
        total: int,
        halo: int,
    ) -> Steps:
        """Stage i's output on [start, stop) of its `total` samples, from its input x (B, pad + T + pad, C)
        (activated) and the padded source, as a step generator (see `conv.run_lockstep`) ->
        (B, stop − start, C) activated for the next stage, or the waveform (B, stop − start, 1) in the last
        stage."""
        lo, hi = start - halo, stop + halo
        u = self.ups[i].region(x, pad, lo, hi)  # (B, hi − lo, C)
        if source is not None:
            u = u + self.noise_convs[i].region(source, pad_src, lo, hi)
        u = yield _zero_outside(u, lo, total)
        last = i == len(self.ups) - 1
        post = self.conv_post.padding if last else 0
        reach = halo - post
        ys = []
        for block in self._stage_blocks(i):
            cut = reach - block.reach
            piece = u[:, cut : u.shape[1] - cut]
            ys.append((yield from block.steps(piece, lo + cut, total)))  # (B, stop − start + 2·post, C)
        if not last:
            return _average(ys)
        x = ys[0]
        for y in ys[1:]:
            x = x + y
        x = _zero_outside(x / self.num_kernels, start - post, total)
        return mx.tanh(self.conv_post.valid(_lrelu(x, FINAL_LRELU_SLOPE).astype(self.conv_post.weight.dtype)))
