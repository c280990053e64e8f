"""RMVPE pitch estimator (the ``E2E`` model of RVC's ``rmvpe.py``) in MLX, channels-last.

Audio (16 kHz) -> log-mel (B, T, 128) -> frames padded to a multiple of 32 -> deep U-Net on (B, T, 128, C)
-> 3x3 conv to 3 channels -> (B, T, 384) -> bidirectional GRU -> linear + sigmoid -> salience (B, T, 360)
-> local weighted average of cents around the argmax -> f0 in Hz (0 where unvoiced).

Batch norms are folded into the preceding convolutions at load time (all of them except the encoder's input
norm, which precedes zero padding and stays a scale and shift). 3x3 convs are one GEMM over three mel
shifts plus a sum of three time shifts (`Conv3x3`); the transposed convs (stride 2, kernel 3) are one 2x2
conv producing the four output phases, then a pixel shuffle (`UpConv`).

Memory and long inputs, both exact (the same result as one pass, up to float rounding):
- every U-Net stage runs over time in slabs with the stage's own halo (`SLAB_FRAMES`), so temporaries stay
  bounded whatever the length;
- the U-Net as a whole can run in chunks (``chunk_frames``) overlapping by its receptive field
  (`unet_margin_frames`, on the 32-frame pooling grid), which bounds the full-length tensors too. The GRU is
  not local and always runs over the whole sequence (`models/gru.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from rvc_mlx import dsp
from rvc_mlx.models.conv import cpu_streams, use_cpu_path
from rvc_mlx.models.gru import BiGRU
from rvc_mlx.pitch import PITCH_HOP_LENGTH as HOP_LENGTH  # (samples per frame, 100 frames/s)
from rvc_mlx.pitch import PITCH_SAMPLE_RATE as SAMPLE_RATE  # (Hz the model works at)

N_BINS = 360  # salience bins, 20 cents apart
N_MELS = 128  # mel bands (fixed by the GRU input size 3 * 128)
CENTS_OFFSET = 1997.3794084376191  # cents of bin 0 (relative to 10 Hz)
CENTS_PER_BIN = 20  # bin spacing
DEFAULT_THRESHOLD = 0.03  # a frame whose best salience is <= this is unvoiced
DECODE_BLOCK_FRAMES = 16384  # frames decoded at a time by `f0_from_audio`
FRAME_MULTIPLE = 32  # frames are padded to a multiple of this (2 ** number of pooling levels)
MEL_PADDINGS = ("reflect", "constant")  # how the frame padding is filled: WebUI/Applio, rvc 0.3.5

MEL_CONFIG = dsp.MelConfig(  # RMVPE's front end: 1024-point STFT, 128 HTK mel bands 30-8000 Hz
    sample_rate=SAMPLE_RATE, n_fft=1024, hop_length=HOP_LENGTH, win_length=1024, n_mels=N_MELS,
    fmin=30.0, fmax=8000.0, htk=True, norm="slaney", clamp=1e-5,
)
# Cents of each bin, zero-padded by 4 on both sides as the reference decoder indexes it.
CENTS_MAPPING = np.pad(CENTS_PER_BIN * np.arange(N_BINS) + CENTS_OFFSET, (4, 4))  # (368,) float64


@dataclass(frozen=True)
class RMVPEConfig:
    """Architecture of ``E2E(n_blocks, n_gru=1, kernel_size=(2, 2), en_de_layers, inter_layers, 1, ch)``."""

    n_blocks: int = 4  # residual conv blocks per encoder/intermediate/decoder stage
    en_de_layers: int = 5  # encoder levels (each halves time and mel) = decoder levels
    inter_layers: int = 4  # intermediate stages at the lowest resolution
    en_out_channels: int = 16  # channels of the first encoder level (doubles per level)
    gru_hidden: int = 256  # hidden size per GRU direction

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# ---------------------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------------------


@partial(mx.compile, shapeless=True)
def _sum3_bias_relu(a: mx.array, b: mx.array, c: mx.array, bias: mx.array) -> mx.array:
    return mx.maximum(a + b + c + bias, 0.0)


@partial(mx.compile, shapeless=True)
def _sum3_bias_relu_add(a: mx.array, b: mx.array, c: mx.array, bias: mx.array, res: mx.array) -> mx.array:
    return mx.maximum(a + b + c + bias, 0.0) + res


class Conv3x3(nn.Module):
    """3x3 conv, padding 1, with bias (a folded batch norm): (B, T, F, C_in) -> (B, T, F, C_out).

    Computed as one GEMM: the input padded by one frame/bin, its three mel shifts side by side (B, T+2, F,
    3 C_in), times ``weight`` (3 C_in, 3 C_out) = rows (mel tap, C_in) x columns (time tap, C_out); the three
    time taps are then summed from shifted frames (contiguous slices). On CPU this is several times faster
    than a 9-tap im2col at RMVPE's low channel counts.
    """

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.weight = mx.zeros((3 * c_in, 3 * c_out))
        self.bias = mx.zeros((c_out,))

    def taps(self, x: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """The three time-tap partial sums, each (B, T, F, C_out), without bias."""
        return self.padded_taps(mx.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)]))

    def padded_taps(self, xp: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """`taps` of an input given padded (B, T+2, F+2, C_in): the T outputs that read only it."""
        t, f = xp.shape[1] - 2, xp.shape[2] - 2
        co = self.bias.shape[0]
        cols = mx.concatenate([xp[:, :, j : j + f] for j in range(3)], axis=-1)  # (B, T+2, F, 3C)
        z = cols @ self.weight  # (B, T+2, F, 3Co)
        return z[:, :t, :, :co], z[:, 1 : t + 1, :, co : 2 * co], z[:, 2:, :, 2 * co :]

    def __call__(self, x: mx.array) -> mx.array:
        a, b, c = self.taps(x)
        return a + b + c + self.bias


class Pointwise(nn.Module):
    """1x1 conv as a matmul; weight stored (C_in, C_out)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.weight = mx.zeros((c_in, c_out))
        self.bias = mx.zeros((c_out,))

    def __call__(self, x: mx.array) -> mx.array:
        return x @ self.weight + self.bias


class ResBlock(nn.Module):
    """``ConvBlockRes``: relu(bn(conv)) twice, plus the input (or its 1x1 projection)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = Conv3x3(c_in, c_out)
        self.conv2 = Conv3x3(c_out, c_out)
        if c_in != c_out:
            self.shortcut = Pointwise(c_in, c_out)

    def __call__(self, x: mx.array) -> mx.array:
        h = _sum3_bias_relu(*self.conv1.taps(x), self.conv1.bias)
        res = self.shortcut(x) if "shortcut" in self else x
        return _sum3_bias_relu_add(*self.conv2.taps(h), self.conv2.bias, res)


class Stage(nn.Module):
    """``n_blocks`` ResBlocks (a ``ResEncoderBlock`` without its pooling)."""

    def __init__(self, c_in: int, c_out: int, n_blocks: int):
        super().__init__()
        self.blocks = [ResBlock(c_in if i == 0 else c_out, c_out) for i in range(n_blocks)]

    def __call__(self, x: mx.array) -> mx.array:
        for block in self.blocks:
            x = block(x)
        return x


class UpConv(nn.Module):
    """ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1) + folded BN + ReLU.

    Output sample (2i + a, 2j + b) only sees inputs (i, j), (i, j+1), (i+1, j), (i+1, j+1), so one valid 2x2
    conv over the input padded by one zero at the end gives all four phases as 4 * C_out channels ordered
    (a, b, c_out); a pixel shuffle interleaves them: (B, T, F, C_in) -> (B, 2T, 2F, C_out).
    """

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.weight = mx.zeros((4 * c_out, 2, 2, c_in))
        self.bias = mx.zeros((4 * c_out,))

    def __call__(self, x: mx.array) -> mx.array:
        b, t, f, _ = x.shape
        c_out = self.bias.shape[0] // 4
        y = mx.conv2d(mx.pad(x, [(0, 0), (0, 1), (0, 1), (0, 0)]), self.weight) + self.bias  # (B, T, F, 4Co)
        y = y.reshape(b, t, f, 2, 2, c_out).transpose(0, 1, 3, 2, 4, 5)  # (B, T, 2, F, 2, Co)
        return nn.relu(y.reshape(b, 2 * t, 2 * f, c_out))  # (B, 2T, 2F, Co)


class DecoderLevel(nn.Module):
    """``ResDecoderBlock``: upsample, concatenate the encoder skip (after), residual blocks."""

    def __init__(self, c_in: int, c_out: int, n_blocks: int):
        super().__init__()
        self.up = UpConv(c_in, c_out)
        self.stage = Stage(2 * c_out, c_out, n_blocks)

    def merge(self, up: mx.array, skip: mx.array) -> mx.array:
        """Residual blocks over [upsampled, skip] channels (the part after `up`)."""
        return self.stage(mx.concatenate([up, skip], axis=-1))

    def __call__(self, x: mx.array, skip: mx.array) -> mx.array:
        return self.merge(self.up(x), skip)


SLAB_FRAMES = 512  # CPU path: frames (of each level) per slab of a U-Net stage (each slab stays in cache)
# Other back ends: each slab is a host round trip. H100, 62 s of audio (6 016 frames), U-Net + GRU: slabs of
# 512 frames 0.31 s and ~1 GiB above the weights, one pass per stage 0.19 s and ~6 GiB. 2048 sits between
# (not measured there); it keeps the memory of the 16 384-frame chunks of long inputs bounded.
GPU_SLAB_FRAMES = 2048


def _slab_frames() -> int:
    return SLAB_FRAMES if use_cpu_path() else GPU_SLAB_FRAMES


def _slabbed(fn, inputs: tuple, halo: int, slab: int | None, scale: int = 1) -> mx.array:
    """``fn(*inputs)`` for a function that is local in time (output frame ``scale * i + k`` depends on input
    frames within ``halo`` of ``i``), computed in slabs of ``slab`` input frames, each with ``halo`` frames of
    context. Every kept frame sees exactly the inputs and sequence ends of a single pass."""
    t = inputs[0].shape[1]
    if slab is None or t <= slab:
        return fn(*inputs)
    parts = []
    for start in range(0, t, slab):
        end = min(t, start + slab)
        lo, hi = max(0, start - halo), min(t, end + halo)
        y = fn(*(a[:, lo:hi] for a in inputs))
        part = y[:, scale * (start - lo) : scale * (end - lo)]
        mx.eval(part)
        parts.append(part)
    return mx.concatenate(parts, axis=1)


def _avg_pool2(x: mx.array) -> mx.array:
    """2x2 average pooling, stride 2: (B, T, F, C) -> (B, T/2, F/2, C)."""
    b, t, f, c = x.shape
    x = x.reshape(b, t // 2, 2, f // 2, 2, c)  # (B, T/2, 2, F/2, 2, C)
    return x.mean(axis=(2, 4))  # (B, T/2, F/2, C)


# CPU path on several cores: every 3x3 conv of a stage is split over time into one part per CPU stream
# (`cpu_streams`); part k's conv reads one frame of its neighbours' parts of the previous conv's output, so
# the lanes meet at every conv (no halo to recompute, which would double the work at the deepest levels: 16
# frames there for 5 s of audio). The stage's slabs (`_slabbed`) stay as they are.


def _lane_bounds(t: int, n: int) -> list[int]:
    """Frame boundaries of ``n`` near-equal parts of ``t`` frames (every part non-empty: n <= t)."""
    return [k * t // n for k in range(n + 1)]


def _frames(parts: list[mx.array], bounds: list[int], lo: int, hi: int) -> mx.array:
    """Frames [lo, hi) of the sequence held as ``parts`` (part k: frames bounds[k]:bounds[k+1])."""
    pieces = []
    for part, a, b in zip(parts, bounds[:-1], bounds[1:], strict=True):
        s, e = max(lo, a), min(hi, b)
        if s < e:
            pieces.append(part[:, s - a : e - a])
    return pieces[0] if len(pieces) == 1 else mx.concatenate(pieces, axis=1)


def _part_taps(conv: Conv3x3, parts: list[mx.array], bounds: list[int], k: int):
    """`Conv3x3.taps` for part k's frames, reading one frame beyond it (zero padding at the sequence ends)."""
    lo, hi, t = bounds[k], bounds[k + 1], bounds[-1]
    src = _frames(parts, bounds, max(lo - 1, 0), min(hi + 1, t))
    return conv.padded_taps(mx.pad(src, [(0, 0), (int(lo == 0), int(hi == t)), (1, 1), (0, 0)]))


def _stage_lanes(stage: Stage, parts: list[mx.array], bounds: list[int], streams) -> mx.array:
    """A `Stage` over an input held as one time part per stream -> the whole output (B, T, F, C_out)."""
    n = len(parts)
    for block in stage.blocks:
        hs = []
        for k in range(n):
            with mx.stream(streams[k]):
                hs.append(_sum3_bias_relu(*_part_taps(block.conv1, parts, bounds, k), block.conv1.bias))
        outs = []
        for k in range(n):
            with mx.stream(streams[k]):
                res = block.shortcut(parts[k]) if "shortcut" in block else parts[k]
                taps = _part_taps(block.conv2, hs, bounds, k)
                outs.append(_sum3_bias_relu_add(*taps, block.conv2.bias, res))
        parts = outs
    return mx.concatenate(parts, axis=1)


def _split(arrays: tuple, streams) -> tuple[list[mx.array], list[int], list]:
    """(B, T, F, C_i) inputs -> their time parts (channels concatenated), bounds, and the streams used."""
    t = arrays[0].shape[1]
    n = min(len(streams), t)
    bounds = _lane_bounds(t, n)
    parts = []
    for k in range(n):
        with mx.stream(streams[k]):
            pieces = [a[:, bounds[k] : bounds[k + 1]] for a in arrays]
            parts.append(pieces[0] if len(pieces) == 1 else mx.concatenate(pieces, axis=-1))
    return parts, bounds, streams[:n]


def _stage_cpu(stage: Stage, streams, *inputs: mx.array) -> mx.array:
    """`stage` over the channel concatenation of ``inputs``, on the CPU streams."""
    parts, bounds, streams = _split(inputs, streams)
    return _stage_lanes(stage, parts, bounds, streams)


def _head_cpu(head: Conv3x3, streams, x: mx.array) -> mx.array:
    """The head conv (bias, no activation) on the CPU streams."""
    parts, bounds, streams = _split((x,), streams)
    outs = []
    for k in range(len(parts)):
        with mx.stream(streams[k]):
            a, b, c = _part_taps(head, parts, bounds, k)
            outs.append(a + b + c + head.bias)
    return mx.concatenate(outs, axis=1)


class UNet(nn.Module):
    """``DeepUnet`` + the ``cnn`` head: log-mel (B, T, 128) -> features (B, T, 384), T a multiple of 32.

    Feature index is ``mel_bin * 3 + channel`` (channels-last flattening; the GRU input weights are permuted
    to match at conversion).
    """

    def __init__(self, config: RMVPEConfig):
        super().__init__()
        n, ch = config.n_blocks, config.en_out_channels
        self.n_blocks = n
        self.input_scale = mx.ones((1,))  # the encoder's input batch norm as x * scale + shift
        self.input_shift = mx.zeros((1,))
        levels = config.en_de_layers
        self.encoder = [Stage(1 if i == 0 else ch * 2 ** (i - 1), ch * 2**i, n) for i in range(levels)]
        deep = ch * 2**levels
        self.intermediate = [Stage(deep if i else deep // 2, deep, n) for i in range(config.inter_layers)]
        self.decoder = [DecoderLevel(deep // 2**i, deep // 2 ** (i + 1), n) for i in range(levels)]
        self.head = Conv3x3(ch, 3)

    def __call__(self, mel: mx.array, slab_frames: int | None = SLAB_FRAMES, on_stage=None) -> mx.array:
        """(B, T, 128) -> (B, T, 384). Every stage runs over time in slabs of ``slab_frames`` frames of its
        own level (plus the stage's halo), which bounds the temporaries; ``None``: no slabs. ``on_stage(name,
        x)``, if given, is called after each part with its output (``benchmarks/profile_rmvpe.py`` times
        them)."""
        on_stage = on_stage or (lambda name, x: None)
        b, t, f = mel.shape
        halo = 2 * self.n_blocks  # each residual block is two 3x3 convs: one frame of reach each
        x = mel[..., None] * self.input_scale + self.input_shift  # (B, T, F, 1), float32
        x = x.astype(self.head.weight.dtype)  # the U-Net's compute dtype (float32 or half)
        streams = cpu_streams() if use_cpu_path() else []
        if len(streams) > 1:  # the CPU path on several cores: stages split over time across the streams
            stage_fn = lambda stage: partial(_stage_cpu, stage, streams)  # noqa: E731
            merge_fn = lambda level: partial(_stage_cpu, level.stage, streams)  # noqa: E731
            head_fn = partial(_head_cpu, self.head, streams)
        else:
            stage_fn, merge_fn, head_fn = (lambda stage: stage), (lambda level: level.merge), self.head
        skips = []
        for i, stage in enumerate(self.encoder):
            x = _slabbed(stage_fn(stage), (x,), halo, slab_frames)
            skips.append(x)
            x = _avg_pool2(x)
            on_stage(f"encoder {i}", x)
        for i, stage in enumerate(self.intermediate):
            x = _slabbed(stage_fn(stage), (x,), halo, slab_frames)
            on_stage(f"intermediate {i}", x)
        for i, (level, skip) in enumerate(zip(self.decoder, reversed(skips), strict=True)):
            up = _slabbed(level.up, (x,), 1, None if slab_frames is None else slab_frames // 2, scale=2)
            on_stage(f"up {i}", up)
            x = _slabbed(merge_fn(level), (up, skip), halo, slab_frames)
            on_stage(f"decoder {i}", x)
        x = _slabbed(head_fn, (x,), 1, slab_frames).reshape(b, t, f * 3)  # (B, T, F, 3) -> (B, T, 3F)
        on_stage("head", x)
        return x


class Linear(nn.Module):
    """y = x @ weight + bias with weight stored (D_in, D_out)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.weight = mx.zeros((d_in, d_out))
        self.bias = mx.zeros((d_out,))

    def __call__(self, x: mx.array) -> mx.array:
        return x @ self.weight + self.bias


# ---------------------------------------------------------------------------------------------------------
# Receptive field of the U-Net (for exact chunking)
# ---------------------------------------------------------------------------------------------------------


def unet_input_span(config: RMVPEConfig, t: int) -> tuple[int, int]:
    """Inclusive range of input frames that U-Net output frame ``t`` depends on (away from the sequence ends;
    interval arithmetic through every path: skips, poolings, transposed convs)."""
    n, levels = config.n_blocks, config.en_de_layers

    def encoder_input(level: int, lo: int, hi: int) -> tuple[int, int]:
        # interval of the level-`level` skip tensor -> interval of encoder input frames
        lo, hi = lo - 2 * n, hi + 2 * n  # n residual blocks of two 3x3 convs
        for _ in range(level):
            lo, hi = 2 * lo, 2 * hi + 1  # through the pooling, then the previous level's blocks
            lo, hi = lo - 2 * n, hi + 2 * n
        return lo, hi

    lo, hi = t - 1, t + 1  # head conv
    spans = []
    for level in range(levels):  # the decoder from its last level (full resolution) down
        lo, hi = lo - 2 * n, hi + 2 * n  # residual blocks after the concatenation
        spans.append(encoder_input(level, lo, hi))  # skip path
        lo, hi = -((1 - lo) // 2), (hi + 1) // 2  # transposed conv: out o <- in i with o = 2i - 1 + k
    lo, hi = lo - 2 * n * config.inter_layers, hi + 2 * n * config.inter_layers  # intermediate stages
    lo, hi = 2 * lo, 2 * hi + 1  # the last pooling
    spans.append(encoder_input(levels - 1, lo, hi))
    return min(s[0] for s in spans), max(s[1] for s in spans)


def unet_margin_frames(config: RMVPEConfig) -> int:
    """Frames of context each side that make a chunked U-Net pass exact, rounded up to the 32-frame grid."""
    period = 2**config.en_de_layers
    first = 4 * period  # a kept run of frames starts and ends on the pooling grid: check one whole period
    spans = [unet_input_span(config, t) for t in range(first, first + period)]
    left = first - min(lo for lo, _ in spans)
    right = max(hi for _, hi in spans) - (first + period - 1)
    return -(-max(left, right) // period) * period


# ---------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------


class RMVPE(nn.Module):
    """log-mel -> salience. Weights come from `rvc_mlx.checkpoints.rmvpe` (folded and permuted there)."""

    def __init__(self, config: RMVPEConfig = RMVPEConfig()):
        super().__init__()
        self.config = config
        self.unet = UNet(config)
        self.gru = BiGRU(3 * N_MELS, config.gru_hidden)
        self.fc = Linear(2 * config.gru_hidden, N_BINS)

    def unet_features(self, mel: mx.array, chunk_frames: int | None = None) -> mx.array:
        """U-Net + head over (B, T, 128) with T a multiple of 32 -> (B, T, 384).

        ``chunk_frames`` (rounded up to a multiple of 32): frames kept per chunk; each chunk is computed with
        `unet_margin_frames` of context on both sides (the exact receptive field on the pooling grid), so
        every kept frame sees the same inputs and borders as in a single pass.
        """
        t = mel.shape[1]
        period = 2**self.config.en_de_layers
        if t % period:
            raise ValueError(f"frame count {t} is not a multiple of {period}")
        if chunk_frames is None or chunk_frames >= t:
            return self.unet(mel, _slab_frames())
        core = -(-max(chunk_frames, 1) // period) * period
        margin = unet_margin_frames(self.config)
        parts = []
        for start in range(0, t, core):
            lo, hi = max(0, start - margin), min(t, start + core + margin)
            feats = self.unet(mel[:, lo:hi], _slab_frames())  # (B, hi - lo, 384)
            part = feats[:, start - lo : min(start + core, t) - lo]
            mx.eval(part)
            parts.append(part)
        return mx.concatenate(parts, axis=1)

    def __call__(self, mel: mx.array, chunk_frames: int | None = None) -> mx.array:
        """Salience (B, T, 360) from a padded log-mel (B, T, 128), T a multiple of 32."""
        feats = self.unet_features(mel, chunk_frames)  # (B, T, 384)
        return mx.sigmoid(self.fc(self.gru(feats)).astype(mx.float32))  # (B, T, 360) float32


def pad_frames(mel: mx.array, mode: str = "reflect") -> mx.array:
    """Pad (B, T, 128) at the end of time to a multiple of 32 frames: reflect (WebUI) or zeros (rvc 0.3.5)."""
    t = mel.shape[1]
    n_pad = -(-t // FRAME_MULTIPLE) * FRAME_MULTIPLE - t
    if n_pad == 0:
        return mel
    if mode == "constant":
        return mx.pad(mel, [(0, 0), (0, n_pad), (0, 0)])
    if mode != "reflect":
        raise ValueError(f"mel_padding must be one of {MEL_PADDINGS}, got {mode!r}")
    if n_pad >= t:
        raise ValueError(f"reflect padding of {n_pad} frames needs more than {n_pad} frames, got {t}")
    idx = mx.array(np.arange(t - 2, t - 2 - n_pad, -1, dtype=np.int32))
    return mx.concatenate([mel, mel[:, idx]], axis=1)


def decode(salience: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Salience (T, 360) -> f0 in Hz (T,) float64, 0 where unvoiced; the reference's arithmetic exactly.

    Weighted average of the cents of the 9 bins around the argmax; a frame whose best salience is
    <= ``threshold`` gets 0.
    """
    salience = np.asarray(salience)
    center = np.argmax(salience, axis=1) + 4  # index into the 4-padded bins
    padded = np.pad(salience, ((0, 0), (4, 4)))  # (T, 368)
    idx = center[:, None] + np.arange(-4, 5)[None, :]  # (T, 9)
    window = np.take_along_axis(padded, idx, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):  # all-zero rows: masked as unvoiced just below
        cents = np.sum(window * CENTS_MAPPING[idx], 1) / np.sum(window, 1)
    cents[np.max(padded, axis=1) <= threshold] = 0
    f0 = 10 * (2 ** (cents / 1200))
    f0[f0 == 10] = 0
    return f0


def log_mel(audio: mx.array) -> mx.array:
    """16 kHz audio (B, N) -> log-mel (B, 1 + N // 160, 128)."""
    return dsp.log_mel_spectrogram(audio, MEL_CONFIG)


def salience_from_audio(model: RMVPE, audio: np.ndarray, mel_padding: str = "reflect",
                        chunk_frames: int | None = None) -> np.ndarray:
    """16 kHz mono audio (N,) -> salience (1 + N // 160, 360) float32."""
    mel = log_mel(mx.array(np.asarray(audio, dtype=np.float32))[None])  # (1, T, 128)
    t = mel.shape[1]
    sal = model(pad_frames(mel, mel_padding), chunk_frames)[0, :t]
    return np.array(sal)


def f0_from_audio(model: RMVPE, audio: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
                  mel_padding: str = "reflect", chunk_frames: int | None = None) -> np.ndarray:
    """16 kHz mono audio (N,) -> f0 in Hz at 100 frames/s, (1 + N // 160,) float64, 0 where unvoiced.
    Decoded in blocks of frames (each frame's decoding is its own), bounding the decoder's temporaries."""
    salience = salience_from_audio(model, audio, mel_padding, chunk_frames)
    starts = range(0, len(salience), DECODE_BLOCK_FRAMES)
    return np.concatenate([decode(salience[i : i + DECODE_BLOCK_FRAMES], threshold) for i in starts])
