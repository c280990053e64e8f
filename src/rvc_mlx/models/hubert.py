"""HuBERT-base / ContentVec content encoder in MLX, equal to fairseq's `HubertModel.extract_features`.

What RVC runs (`rvc/modules/vc/pipeline.py`, `Pipeline.vc`): 16 kHz mono samples, no input normalisation,
no padding, a padding mask that is all False, `output_layer` 9 (v1, then `final_proj` 768 -> 256) or 12 (v2).

Pipeline (fairseq names in brackets; all tensors channels-last):
  samples (B, N)
  -> 7 strided convolutions without bias, 512 channels, kernels [10,3,3,3,3,2,2], strides [5,2,2,2,2,2,2]
     [feature_extractor.conv_layers]; the first is followed by a GroupNorm with one group per channel
     (statistics over time), every one by GELU (fairseq `extractor_mode="default"`)   -> (B, T, 512)
  -> LayerNorm [layer_norm] -> Linear 512 -> 768 [post_extract_proj]                 -> (B, T, 768)
  -> + GELU(grouped conv, kernel 128, 16 groups, padding 64, last frame dropped) [encoder.pos_conv]
  -> LayerNorm [encoder.layer_norm] (post-norm model: before the layers)
  -> 12 post-norm layers: x = LN(x + attn(x)); x = LN(x + fc2(GELU(fc1(x))))          -> (B, T, 768)
T = (N - 400) // 320 + 1 frames, i.e. 50 frames per second.

`output_layer=n` returns the output of layer n (1-based), as fairseq's `extract_features(output_layer=n)`
and as transformers' `hidden_states[n]` (index 0 there is the input of layer 1).

Weights arrive prepared by `rvc_mlx.checkpoints.hubert`: conv weights (C_out, K, C_in), the positional
conv's weight norm folded, q/k/v fused into one (3C, C) matrix, linears (out, in) as in `mlx.nn.Linear`.

When `models.conv.use_cpu_path()` holds (the default device is the CPU), `extract_features` runs the CPU
path at the end of this file: time lanes on the CPU streams, GELU and the attention softmax as in-place numpy
passes (measured on a 2-core x86 VM: 3.7x faster than the plain path at 30 s of audio, 2x at 5 s). Elsewhere
the modules below run as plain MLX.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from rvc_mlx.errors import AudioError
from rvc_mlx.models.activations import drive_lanes, erf_gelu, exp_shifted_inplace_np, gelu_inplace_np
from rvc_mlx.models.conv import _cached, cpu_streams, use_cpu_path
from rvc_mlx.pitch import PITCH_SAMPLE_RATE as SAMPLE_RATE  # (the only rate HuBERT accepts)

# fairseq's conv_feature_layers for base: (channels, kernel, stride) per layer.
BASE_CONV_LAYERS = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2
QUERY_BLOCK_ELEMENTS = 3 << 20  # CPU path: attention scores per query block (B·H·rows·T), 12 MB
QUERY_BLOCK_MIN_ROWS = 32  # CPU path: fewest query rows per block
LANE_MIN_FRAMES = 32  # CPU path: fewest output frames per lane (CPU stream)
POS_CONV_PIECE_FRAMES = 256  # CPU path: frames per positional-conv call (1.7x less CPU than 1 600 at once)


# Exact (erf) GELU, x * Phi(x), as torch.nn.GELU() / F.gelu: elementwise on any shape.
gelu = mx.compile(erf_gelu, shapeless=True)


@partial(mx.compile, shapeless=True)
def _normalize_gelu(x: mx.array, mean: mx.array, scale: mx.array, bias: mx.array) -> mx.array:
    """gelu((x - mean) * scale + bias) in one pass over x."""
    return erf_gelu((x - mean) * scale + bias)


def attention(q: mx.array, k: mx.array, v: mx.array, scale: float) -> mx.array:
    """softmax(q k^T * scale) v: q, k, v (B, H, T, D) -> (B, H, T, D) (the CPU path: `_layer_cpu`)."""
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale)


@dataclass(frozen=True)
class HubertConfig:
    """Shape of a HuBERT checkpoint (defaults: HuBERT-base / ContentVec as RVC uses them)."""

    conv_layers: tuple[tuple[int, int, int], ...] = BASE_CONV_LAYERS  # (channels, kernel, stride) per conv
    hidden_size: int = 768  # transformer width (encoder_embed_dim)
    num_layers: int = 12  # transformer layers (encoder_layers)
    num_heads: int = 12  # attention heads (encoder_attention_heads)
    ffn_size: int = 3072  # inner width of each feed-forward block (encoder_ffn_embed_dim)
    pos_conv_kernel: int = 128  # kernel of the positional convolution, in frames (conv_pos)
    pos_conv_groups: int = 16  # groups of the positional convolution (conv_pos_groups)
    final_proj_size: int | None = None  # output width of `final_proj` (256 in RVC's file); None: absent
    layer_norm_eps: float = 1e-5  # epsilon of every LayerNorm and of the GroupNorm (torch default)

    @property
    def hop_length(self) -> int:
        """Samples between consecutive output frames (320 for base: 50 frames/s at 16 kHz)."""
        return math.prod(s for _, _, s in self.conv_layers)

    @property
    def window_length(self) -> int:
        """Samples one output frame sees (400 for base): the shortest input that yields a frame."""
        size = 1
        for _, kernel, stride in reversed(self.conv_layers):
            size = (size - 1) * stride + kernel
        return size

    def num_frames(self, num_samples: int) -> int:
        """Output frames for `num_samples` input samples (0 when shorter than `window_length`)."""
        for _, kernel, stride in self.conv_layers:
            num_samples = max((num_samples - kernel) // stride + 1, 0)
        return num_samples


class StridedConv(nn.Module):
    """Conv1d without bias or padding, kernel K, stride S, as one GEMM per block of S taps (`blocks`).

    weight: (C_out, K, C_in). Input (B, T, C_in) -> output (B, (T - K) // S + 1, C_out).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.weight = mx.zeros((out_channels, kernel_size, in_channels))

    def __call__(self, x: mx.array) -> mx.array:
        return self.blocks(x)  # (B, n, C_out)

    def frames(self, x: mx.array) -> mx.array:
        """Each output's input taps side by side: (B, T, C_in) -> (B, n, K·C_in)."""
        n = (x.shape[1] - self.kernel_size) // self.stride + 1
        last = self.stride * (n - 1) + 1  # tap i of every frame is x[i], x[i + S], ...
        return mx.concatenate([x[:, i : i + last : self.stride] for i in range(self.kernel_size)], axis=-1)

    def frame_weight(self) -> mx.array:
        """The weight as one (K·C_in, C_out) matrix for `frames`, built once."""
        return _cached(self, lambda w: mx.contiguous(w.reshape(w.shape[0], -1).T), "_frame_weight")

    def _block_weights(self) -> list[mx.array]:
        """Per block of S taps (the last may hold fewer, r): its (r·C_in, C_out) matrix, built once."""
        k, s = self.kernel_size, self.stride

        def build(w: mx.array) -> list[mx.array]:
            c_out = w.shape[0]
            return [mx.contiguous(w[:, j : j + s].reshape(c_out, -1).T) for j in range(0, k, s)]

        return _cached(self, build, "_blocks")

    def blocks(self, x: mx.array) -> mx.array:
        """The convolution without a framing copy: (B, T, C_in) -> (B, n, C_out).

        Input rows j·S .. j·S + S·n, read as (n, S·C_in), are every frame's taps j·S .. j·S + S - 1: one GEMM
        per block of S taps on a view of x (for B = 1), plus a strided-slice GEMM for a last partial block
        (kernel 3, stride 2: (n, 2C)·(2C, C_out) + (n, C)·(C, C_out); on the CPU 13% less time than one GEMM
        over copied (n, 3C) frames).
        """
        b, t, c = x.shape
        k, s = self.kernel_size, self.stride
        n = (t - k) // s + 1
        y = None
        for j, w in zip(range(0, k, s), self._block_weights(), strict=True):
            r = min(s, k - j)  # taps in this block
            if r == s:
                xin = x[:, j : j + s * n].reshape(b, n, s * c)  # (B, n, S*C)
            else:
                last = s * (n - 1) + 1
                taps = [x[:, j + i : j + i + last : s] for i in range(r)]
                xin = taps[0] if r == 1 else mx.concatenate(taps, axis=-1)  # (B, n, r*C)
            y = xin @ w if y is None else mx.addmm(y, xin, w)
        return y


class ChannelNorm(nn.Module):
    """GroupNorm with one group per channel: each channel normalised over time. (B, T, C) -> (B, T, C)."""

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = mx.ones((channels,))
        self.bias = mx.zeros((channels,))

    def __call__(self, x: mx.array, then_gelu: bool = False) -> mx.array:
        mean = mx.mean(x, axis=1, keepdims=True)  # (B, 1, C)
        scale = mx.rsqrt(mx.var(x, axis=1, keepdims=True) + self.eps) * self.weight  # (B, 1, C)
        if then_gelu:
            return _normalize_gelu(x, mean, scale, self.bias)
        return (x - mean) * scale + self.bias


class FeatureExtractor(nn.Module):
    """The conv stack: samples (B, N) -> features (B, T, C_last)."""

    def __init__(self, config: HubertConfig):
        super().__init__()
        channels_in = 1
        self.convs = []
        for channels, kernel, stride in config.conv_layers:
            self.convs.append(StridedConv(channels_in, channels, kernel, stride))
            channels_in = channels
        self.norm = ChannelNorm(config.conv_layers[0][0], config.layer_norm_eps)

    def __call__(self, samples: mx.array) -> mx.array:
        x = samples[:, :, None]  # (B, N, 1)
        for i, conv in enumerate(self.convs):
            if i == 0:  # float32 at every precision (`rvc_mlx.precision`): the rest in the model's dtype
                x = self.norm(conv(x), then_gelu=True).astype(self.convs[-1].weight.dtype)
            else:
                x = gelu(conv(x))
        return x


class PositionalConv(nn.Module):
    """GELU(grouped conv, kernel K, padding K/2, last frame dropped): (B, T, C) -> (B, T, C).

    weight: (C, K, C / groups) with weight norm already folded; bias: (C,). The grouped conv runs as one
    plain `mx.conv1d` per group (im2col + 16 large GEMMs). For base on 10 s of audio it costs 0.1-0.2 s of
    CPU, like `mx.conv1d(groups=16)` and `models.conv.Conv1d` with a single-threaded BLAS; with the OpenMP
    BLAS on a busy machine it stays ~0.35 s where the 128 tap matmuls of `models.conv.Conv1d` take 2.3 s.
    """

    def __init__(self, channels: int, kernel_size: int, groups: int):
        super().__init__()
        self.groups = groups
        self.kernel_size = kernel_size
        self.weight = mx.zeros((channels, kernel_size, channels // groups))
        self.bias = mx.zeros((channels,))

    def __call__(self, x: mx.array) -> mx.array:
        t = x.shape[1]
        width = x.shape[2] // self.groups
        pad = self.kernel_size // 2
        xp = mx.pad(x, [(0, 0), (pad, pad), (0, 0)])  # (B, T + K, C)
        parts = [
            mx.conv1d(xp[..., g * width : (g + 1) * width], self.weight[g * width : (g + 1) * width])
            for g in range(self.groups)
        ]
        y = mx.concatenate(parts, axis=-1)[:, :t] + self.bias  # SamePad: T + 1 frames, the last dropped
        return gelu(y)


class SelfAttention(nn.Module):
    """Multi-head self-attention with fused q/k/v: (B, T, C) -> (B, T, C)."""

    def __init__(self, dims: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dims, 3 * dims)  # rows: q, then k, then v
        self.out = nn.Linear(dims, dims)

    def __call__(self, x: mx.array) -> mx.array:
        b, t, c = x.shape
        h = self.num_heads
        qkv = self.qkv(x).reshape(b, t, 3, h, c // h).transpose(2, 0, 3, 1, 4)  # (3, B, H, T, D)
        y = attention(qkv[0], qkv[1], qkv[2], scale=(c // h) ** -0.5)  # (B, H, T, D)
        return self.out(y.transpose(0, 2, 1, 3).reshape(b, t, c))  # (B, T, C)


class EncoderLayer(nn.Module):
    """Post-norm transformer layer: (B, T, C) -> (B, T, C)."""

    def __init__(self, config: HubertConfig):
        super().__init__()
        c = config.hidden_size
        self.attn = SelfAttention(c, config.num_heads)
        self.attn_norm = nn.LayerNorm(c, eps=config.layer_norm_eps)
        self.fc1 = nn.Linear(c, config.ffn_size)
        self.fc2 = nn.Linear(config.ffn_size, c)
        self.final_norm = nn.LayerNorm(c, eps=config.layer_norm_eps)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.attn_norm(x + self.attn(x))
        return self.final_norm(x + self.fc2(gelu(self.fc1(x))))


class HubertModel(nn.Module):
    """HuBERT content encoder. Parameter names are those of the native file (kind "hubert")."""

    def __init__(self, config: HubertConfig = HubertConfig()):
        super().__init__()
        self.config = config
        c = config.hidden_size
        self.feature_extractor = FeatureExtractor(config)
        self.feature_norm = nn.LayerNorm(config.conv_layers[-1][0], eps=config.layer_norm_eps)
        self.feature_proj = nn.Linear(config.conv_layers[-1][0], c)
        self.pos_conv = PositionalConv(c, config.pos_conv_kernel, config.pos_conv_groups)
        self.encoder_norm = nn.LayerNorm(c, eps=config.layer_norm_eps)
        self.layers = [EncoderLayer(config) for _ in range(config.num_layers)]
        if config.final_proj_size is not None:
            self.final_proj = nn.Linear(c, config.final_proj_size)

    def _check_audio(self, samples) -> mx.array:
        """Validate and return the input as float32 (B, N)."""
        if not isinstance(samples, mx.array):
            samples = np.asarray(samples)
            if samples.dtype.kind != "f":
                raise AudioError(None, f"audio must be float samples in [-1, 1], got dtype {samples.dtype}")
            samples = mx.array(samples.astype(np.float32, copy=False))
        elif not mx.issubdtype(samples.dtype, mx.floating):
            raise AudioError(None, f"audio must be float samples in [-1, 1], got dtype {samples.dtype}")
        if samples.ndim == 1:
            samples = samples[None]
        if samples.ndim != 2:
            raise AudioError(None, f"audio must be (samples,) or (batch, samples), got shape {samples.shape}")
        samples = samples.astype(mx.float32)
        n, need = samples.shape[1], self.config.window_length
        if samples.size == 0:
            raise AudioError(None, "audio is empty")
        if n < need:
            ms = need / SAMPLE_RATE * 1000
            raise AudioError(
                None, f"audio has {n} samples; HuBERT needs at least {need} ({ms:g} ms at {SAMPLE_RATE} Hz) "
                "for one frame"
            )
        if not mx.all(mx.isfinite(samples)).item():
            raise AudioError(None, "audio contains NaN or infinite samples")
        return samples

    def extract_features(self, samples, output_layer: int | None = None) -> mx.array:
        """Features after transformer layer `output_layer` (1-based; None: the last).

        samples: (N,) or (B, N) 16 kHz float audio, not normalised. Returns (B, T, hidden_size) in the
        model's dtype with T = config.num_frames(N). Raises AudioError for empty, too short or non-finite
        audio.
        """
        n_layers = self.config.num_layers
        if output_layer is None:
            output_layer = n_layers
        if not 1 <= output_layer <= n_layers:
            raise ValueError(f"output_layer must be in 1..{n_layers}, got {output_layer}")
        samples = self._check_audio(samples)
        if use_cpu_path() and self.feature_proj.weight.dtype == mx.float32:  # numpy passes: float32 only
            return _extract_cpu(self, samples, output_layer)
        x = self.feature_extractor(samples)  # (B, T, 512)
        x = self.feature_proj(self.feature_norm(x))  # (B, T, C)
        x = self.encoder_norm(x + self.pos_conv(x))
        for layer in self.layers[:output_layer]:
            x = layer(x)
        return x

    def project(self, features: mx.array) -> mx.array:
        """`final_proj`: (B, T, hidden_size) -> (B, T, final_proj_size)."""
        if self.config.final_proj_size is None:
            raise ValueError("this checkpoint has no final_proj (RVC v1 needs one: use RVC's hubert_base.pt)")
        return self.final_proj(features)

    def content_features(self, samples, version: str) -> mx.array:
        """What RVC's pipeline feeds the voice model: v1 = final_proj(layer 9) (B, T, 256), v2 = layer 12."""
        if version == "v1":
            return self.project(self.extract_features(samples, output_layer=9))
        if version == "v2":
            return self.extract_features(samples, output_layer=12)
        raise ValueError(f"version must be 'v1' or 'v2', got {version!r}")


# CPU path. The output frames are cut into one time range per CPU stream ("lane", `conv.cpu_streams`), and
# each lane runs everything that is local in time (convolutions, projections, norms, FFN) on its own stream,
# so the cores work in parallel. Exact GELU and the attention softmax, MLX's slowest CPU kernels, run as
# in-place numpy passes on the evaluated buffers (`activations.gelu_inplace_np`, `exp_shifted_inplace_np`) in
# the calling thread, while the streams go on with the other lane's matmuls (`activations.drive_lanes`).


def _lane_bounds(frames: int, streams: list) -> list[int]:
    """Output frame boundaries of the lanes: [0, ..., frames], one range per lane."""
    n = max(1, min(len(streams), frames // LANE_MIN_FRAMES))
    return [k * frames // n for k in range(n + 1)]


def _frontend_cpu(model: HubertModel, samples: mx.array, bounds: list[int], streams: list) -> list[mx.array]:
    """Conv stack, feature norm and projection per lane: samples (B, N) -> (B, T_k, C) for the output
    frames [bounds[k], bounds[k + 1]).

    The first conv's GroupNorm needs the mean and variance over time of each channel of x = F·W (F: the
    (B, t0, K) sample frames, W: (K, C)), which follow from the frames alone: mean = mean(F)·W and
    var = diag(Wᵀ·cov(F)·W). GroupNorm(x) = (F − mean(F))·(W·scale) + bias is then one small GEMM per lane
    (no statistics pass over the wide output, no normalising pass), followed by GELU (numpy); the remaining
    convs run on the lane's own frame range plus context.
    """
    fe, cfg = model.feature_extractor, model.config
    conv0, norm = fe.convs[0], fe.norm
    hop, window = 1, 1  # first-conv frames between / seen by consecutive outputs of the remaining convs
    for _, kernel, stride in reversed(cfg.conv_layers[1:]):
        window = (window - 1) * stride + kernel
        hop *= stride
    frames = conv0.frames(samples[:, :, None])  # (B, t0, K)
    t0 = frames.shape[1]
    centred = frames - mx.mean(frames, axis=1, keepdims=True)  # (B, t0, K)
    w = conv0.frame_weight()  # (K, C)
    cov = (centred.swapaxes(1, 2) @ centred) / t0  # (B, K, K)
    var = mx.sum((cov @ w) * w, axis=1)  # (B, C): the biased variance of each channel of x over time
    w_scaled = w * (mx.rsqrt(var + norm.eps) * norm.weight)[:, None, :]  # (B, K, C)
    mx.eval(centred, w_scaled)
    n_lanes = len(bounds) - 1

    def lane(k: int):
        lo = hop * bounds[k]
        hi = t0 if k == n_lanes - 1 else hop * (bounds[k + 1] - 1) + window
        x = centred[:, lo:hi] @ w_scaled + norm.bias  # (B, hi - lo, C): GroupNorm(conv0) of the lane's frames
        yield x, gelu_inplace_np
        for conv in fe.convs[1:]:
            x = conv.blocks(x)
            yield x, gelu_inplace_np
        return model.feature_proj(model.feature_norm(x))  # (B, T_k, C)

    return drive_lanes([lane(k) for k in range(n_lanes)], streams)


def _pos_conv_cpu(model: HubertModel, xs: list[mx.array], bounds: list[int], streams: list) -> list[mx.array]:
    """encoder_norm(x + pos_conv(x)) per lane.

    Each lane convolves its frames of the padded whole signal in pieces of POS_CONV_PIECE_FRAMES frames
    (each group's im2col stays small), one `mx.conv1d` per piece and group; the lanes' convolutions are
    queued alternately (MLX queues a bounded backlog: lane by lane, the second would start late).
    """
    pc = model.pos_conv
    pad, width, piece = pc.kernel_size // 2, pc.weight.shape[-1], POS_CONV_PIECE_FRAMES
    xp = mx.pad(mx.concatenate(xs, axis=1), [(0, 0), (pad, pad), (0, 0)])  # (B, T + K, C)
    mx.eval(xp)  # (evaluated here: every lane reads it)
    weights = [pc.weight[g * width : (g + 1) * width] for g in range(pc.groups)]  # G x (C/G, K, C/G)
    convs: list[list[mx.array]] = []  # per lane: piece-major, group-minor outputs (B, n, C/G)
    for k in range(len(xs)):
        convs.append([])
        with mx.stream(streams[k]):
            for a in range(bounds[k], bounds[k + 1], piece):
                part = xp[:, a : min(a + piece, bounds[k + 1]) + pc.kernel_size - 1]  # (B, n + K - 1, C)
                convs[k] += [mx.conv1d(part[..., g * width : (g + 1) * width], w)
                             for g, w in enumerate(weights)]
    mx.async_eval([c for step in itertools.zip_longest(*convs) for c in step if c is not None])
    bias = np.array(pc.bias)

    def lane(k: int):
        groups = pc.groups
        rows = [mx.concatenate(convs[k][i : i + groups], axis=-1) for i in range(0, len(convs[k]), groups)]
        y = mx.concatenate(rows, axis=1)  # (B, T_k, C), a fresh array even for one piece
        yield y, partial(gelu_inplace_np, bias=bias)
        return model.encoder_norm(xs[k] + y)

    return drive_lanes([lane(k) for k in range(len(xs))], streams)


def _layer_cpu(layer: EncoderLayer, xs: list[mx.array], streams: list) -> list[mx.array]:
    """One encoder layer over the lanes' frames xs[k] (B, T_k, C): each lane puts its keys and values in
    head-major layout, gathers every lane's, and takes its own queries in blocks of ~QUERY_BLOCK_ELEMENTS
    scores."""
    attn = layer.attn
    b, _, c = xs[0].shape
    h = attn.num_heads
    d = c // h
    qkvs, key_parts, value_parts = [], [], []
    for k, x in enumerate(xs):
        with mx.stream(streams[k]):
            qkvs.append(attn.qkv(x))  # (B, T_k, 3C)
            heads = qkvs[k].reshape(b, x.shape[1], 3, h, d)  # (B, T_k, 3, H, D)
            key_parts.append(mx.contiguous(heads[:, :, 1].transpose(0, 2, 3, 1)))  # (B, H, D, T_k)
            value_parts.append(mx.contiguous(heads[:, :, 2].transpose(0, 2, 1, 3)))  # (B, H, T_k, D)
    # queued now, lane by lane in small graphs: waiting for the first query block would queue lane 0's whole
    # chain before lane 1's (MLX blocks while its backlog is full), leaving stream 1 idle meanwhile
    mx.async_eval([a for kv in zip(key_parts, value_parts, strict=True) for a in kv])
    t = sum(x.shape[1] for x in xs)
    rows = max(QUERY_BLOCK_MIN_ROWS, QUERY_BLOCK_ELEMENTS // (b * h * t))

    def lane(k: int):
        tk = xs[k].shape[1]
        q = qkvs[k][..., :c] * (d**-0.5)
        q = mx.contiguous(q.reshape(b, tk, h, d).transpose(0, 2, 1, 3))  # (B, H, T_k, D)
        # each lane gathers all keys (B, H, D, T) and values (B, H, T, D): no lane waits on another's copy
        keys, values = mx.concatenate(key_parts, axis=-1), mx.concatenate(value_parts, axis=2)
        outs = []
        firsts = list(range(0, tk, rows))
        ahead = q[:, :, :rows] @ keys  # (B, H, rows, T)
        for i in range(len(firsts)):
            scores = ahead
            if i + 1 < len(firsts):  # the next block's scores are queued before this block's numpy pass
                ahead = q[:, :, firsts[i + 1] : firsts[i + 1] + rows] @ keys
                mx.async_eval(ahead)
            sums = yield scores, exp_shifted_inplace_np  # scores now exp(scores - row max)
            outs.append((scores @ values) / mx.array(sums))  # (B, H, rows, D)
            mx.async_eval(outs[-1])
        y = mx.concatenate(outs, axis=2).transpose(0, 2, 1, 3).reshape(b, tk, c)  # (B, T_k, C)
        x = layer.attn_norm(xs[k] + attn.out(y))
        hidden = layer.fc1(x)  # (B, T_k, FFN)
        yield hidden, gelu_inplace_np
        return layer.final_norm(x + layer.fc2(hidden))

    return drive_lanes([lane(k) for k in range(len(xs))], streams)


def _extract_cpu(model: HubertModel, samples: mx.array, output_layer: int) -> mx.array:
    """`extract_features` on the CPU path: samples (B, N) -> (B, T, C), lanes over the CPU streams."""
    streams = cpu_streams()
    bounds = _lane_bounds(model.config.num_frames(samples.shape[1]), streams)
    xs = _frontend_cpu(model, samples, bounds, streams)
    xs = _pos_conv_cpu(model, xs, bounds, streams)
    for layer in model.layers[:output_layer]:
        xs = _layer_cpu(layer, xs, streams)
    return mx.concatenate(xs, axis=1) if len(xs) > 1 else xs[0]
