"""RVC's prior encoder `enc_p`: content features (+ coarse pitch) -> prior mean and log-std, channels-last.

A VITS-style transformer encoder with relative-position self-attention (window 10, one set of relative
embeddings shared by all heads) and convolutional FFNs, matching `rvc.lib.infer_pack.attentions.Encoder` and
`models.TextEncoder256/768`. Submodule names equal the upstream state-dict names.
"""

from __future__ import annotations

import math
from functools import lru_cache

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from rvc_mlx.models.activations import softmax, softmax_arith
from rvc_mlx.models.conv import Conv1d, cpu_streams, use_cpu_path

WINDOW_SIZE = 10  # relative-attention window of the RVC encoder, in frames on each side
PITCH_BINS = 256  # coarse pitch vocabulary of `emb_pitch`
LRELU_SLOPE = 0.1  # leaky ReLU slope of RVC's modules (HiFi-GAN, text encoder)
QUERY_BLOCK_ELEMENTS = 1 << 20  # CPU path: attention scores per query block (B·H·rows·T)
GPU_QUERY_BLOCK_ELEMENTS = 1 << 24  # other back ends: the same bound, for memory on long inputs (64 MiB)
QUERY_BLOCK_MIN_ROWS = 64  # CPU path: fewest query rows per block
FFN_MIN_CHUNK_FRAMES = 128  # CPU path: shortest time chunk of an FFN, frames (fewer: one piece)


class LayerNorm(nn.Module):
    """Layer norm over channels with RVC's parameter names (`gamma`, `beta`), eps 1e-5. (B, T, C) -> same."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps  # variance floor
        self.gamma = mx.ones((channels,))
        self.beta = mx.zeros((channels,))

    def __call__(self, x: mx.array) -> mx.array:
        return mx.fast.layer_norm(x, self.gamma, self.beta, self.eps)


@lru_cache(maxsize=256)
def _band_positions(length: int, window: int, first: int, rows: int) -> tuple[mx.array, ...]:
    """Where the relative-position band of queries [first, first + rows) lies in their (rows, T) attention
    scores and in their (rows, 2·window+1) relative form.

    Returns (abs_pos, rel_pos, abs_of_rel, rel_valid): abs_pos (N,) = i·T + j and rel_pos (N,) =
    i·(2W+1) + j − (first + i) + W for every query row i and key j with |j − first − i| <= window (N pairs,
    flat positions); entry [i, r] of `abs_of_rel` (rows, 2W+1) is the key first + i + r − window that
    relative slot r points at (clipped), valid where `rel_valid` (that key exists).
    """
    i = np.arange(rows)[:, None]
    r = np.arange(2 * window + 1)[None, :]
    key = first + i + r - window  # (rows, 2W+1)
    valid = (key >= 0) & (key < length)
    row, slot = np.nonzero(valid)
    abs_pos = row * length + key[row, slot]
    rel_pos = row * (2 * window + 1) + slot
    return (mx.array(abs_pos.astype(np.int32)), mx.array(rel_pos.astype(np.int32)),
            mx.array(np.clip(key, 0, length - 1).astype(np.int32)), mx.array(valid))


@mx.compile
def _masked_softmax_cpu(scores: mx.array, pair: mx.array) -> mx.array:
    return softmax_arith(mx.where(pair, scores, -1e4))


def _masked_softmax(scores: mx.array, pair: mx.array) -> mx.array:
    """Softmax over keys of scores (B, H, T, T) with pairs outside `pair` (B, 1, T, T) set to −1e4 first."""
    if mx.default_device() == mx.cpu and scores.dtype == mx.float32:
        return _masked_softmax_cpu(scores, pair)
    return mx.softmax(mx.where(pair, scores, -1e4), axis=-1, precise=True)  # half: float32 sums


class MultiHeadAttention(nn.Module):
    """Self-attention with shared relative-position keys and values (`attentions.MultiHeadAttention`)."""

    def __init__(self, channels: int, out_channels: int, n_heads: int, window_size: int = WINDOW_SIZE):
        super().__init__()
        if channels % n_heads:
            raise ValueError(f"channels {channels} not divisible by n_heads {n_heads}")
        self.n_heads = n_heads  # attention heads
        self.k_channels = channels // n_heads  # channels per head
        self.window_size = window_size  # relative positions -window..window have embeddings
        self.conv_q = Conv1d(channels, channels, 1)
        self.conv_k = Conv1d(channels, channels, 1)
        self.conv_v = Conv1d(channels, channels, 1)
        self.conv_o = Conv1d(channels, out_channels, 1)
        rel_std = self.k_channels**-0.5
        self.emb_rel_k = mx.random.normal((1, 2 * window_size + 1, self.k_channels)) * rel_std
        self.emb_rel_v = mx.random.normal((1, 2 * window_size + 1, self.k_channels)) * rel_std

    def _heads(self, x: mx.array) -> mx.array:
        b, t, _ = x.shape
        return x.reshape(b, t, self.n_heads, self.k_channels).transpose(0, 2, 1, 3)  # (B, H, T, d)

    def __call__(self, x: mx.array, key_mask: mx.array | None) -> mx.array:
        """x: (B, T, C); key_mask: (B, T) bool (False = padding) or None -> (B, T, C_out).

        On the CPU path the queries go in blocks of about QUERY_BLOCK_ELEMENTS scores, round-robin over
        the CPU streams (parallel, and each block's (H, rows, T) scores stay small); on other back ends in
        blocks of GPU_QUERY_BLOCK_ELEMENTS on the default stream (the (H, T, T) scores of a long input
        would take GBs).
        """
        b, t, c = x.shape
        q = self._heads(self.conv_q(x)) / math.sqrt(self.k_channels)  # (B, H, T, d), pre-scaled
        k = self._heads(self.conv_k(x)).transpose(0, 1, 3, 2)  # (B, H, d, T)
        v = self._heads(self.conv_v(x))
        cpu = use_cpu_path()
        elements = QUERY_BLOCK_ELEMENTS if cpu else GPU_QUERY_BLOCK_ELEMENTS
        rows = max(QUERY_BLOCK_MIN_ROWS, elements // (b * self.n_heads * t))
        if rows >= t:
            out = self._attend(q, k, v, 0, key_mask)
        else:
            streams = cpu_streams() if cpu else [mx.default_stream(mx.default_device())]
            blocks = []
            for n, first in enumerate(range(0, t, rows)):
                with mx.stream(streams[n % len(streams)]):
                    blocks.append(self._attend(q[:, :, first : first + rows], k, v, first, key_mask))
            out = mx.concatenate(blocks, axis=2)
        out = out.transpose(0, 2, 1, 3).reshape(b, t, c)  # (B, T, C), channel = head·d + i
        return self.conv_o(out)

    def _attend(
        self, q: mx.array, k: mx.array, v: mx.array, first: int, key_mask: mx.array | None
    ) -> mx.array:
        """Queries [first, first + rows): q (B, H, rows, d), k (B, H, d, T), v (B, H, T, d) ->
        (B, H, rows, d)."""
        b, h, rows, _ = q.shape
        t, w = k.shape[-1], self.window_size
        abs_pos, rel_pos, abs_of_rel, rel_valid = _band_positions(t, w, first, rows)
        scores = (q @ k).reshape(b, h, rows * t)  # (B, H, rows·T)
        rel_logits = (q @ self.emb_rel_k[0].T).reshape(b, h, -1)  # (B, H, rows·(2W+1)): vs relative slots
        band = mx.take(scores, abs_pos, axis=-1) + mx.take(rel_logits, rel_pos, axis=-1)  # (B, H, N)
        index = mx.broadcast_to(abs_pos, band.shape)
        scores = mx.put_along_axis(scores, index, band, axis=-1).reshape(b, h, rows, t)  # + local
        if key_mask is not None:
            pair = key_mask[:, None, first : first + rows, None] & key_mask[:, None, None, :]  # (B,1,rows,T)
            p_attn = _masked_softmax(scores, pair)
        else:
            half = scores.dtype != mx.float32  # half precision: float32 sums
            p_attn = mx.softmax(scores, axis=-1, precise=True) if half else softmax(scores)
        out = p_attn @ v  # (B, H, rows, d)
        banded = mx.take_along_axis(p_attn, mx.broadcast_to(abs_of_rel, (b, h, rows, 2 * w + 1)), axis=-1)
        banded = mx.where(rel_valid, banded, 0.0)  # (B, H, rows, 2W+1): weight of relative slot r
        return out + banded @ self.emb_rel_v[0]


class FFN(nn.Module):
    """Two "same"-padded convolutions with ReLU, masked (`attentions.FFN`, non-causal). (B, T, C) -> same."""

    def __init__(self, in_channels: int, out_channels: int, filter_channels: int, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size  # taps of both convolutions
        self.conv_1 = Conv1d(in_channels, filter_channels, kernel_size)
        self.conv_2 = Conv1d(filter_channels, out_channels, kernel_size)

    def _pad(self, x: mx.array) -> mx.array:
        if self.kernel_size == 1:
            return x
        left, right = (self.kernel_size - 1) // 2, self.kernel_size // 2
        return mx.pad(x, [(0, 0), (left, right), (0, 0)])

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        """x: (B, T, C_in), mask: (B, T, 1) float -> (B, T, C_out).

        On the CPU path, long inputs go in one time chunk per CPU stream, each with the two convolutions'
        context on either side.
        """
        t = x.shape[1]
        streams = cpu_streams() if use_cpu_path() else []
        n = min(len(streams), t // FFN_MIN_CHUNK_FRAMES)
        if n < 2:
            return self._ffn(x, mask)
        reach = 2 * (self.kernel_size // 2)  # frames each side an output depends on
        bounds = [k * t // n for k in range(n + 1)]
        pieces = []
        for k, stream in enumerate(streams[:n]):
            lo, hi = max(0, bounds[k] - reach), min(t, bounds[k + 1] + reach)
            with mx.stream(stream):
                pieces.append(self._ffn(x[:, lo:hi], mask[:, lo:hi])[:, bounds[k] - lo : bounds[k + 1] - lo])
        return mx.concatenate(pieces, axis=1)

    def _ffn(self, x: mx.array, mask: mx.array) -> mx.array:
        x = nn.relu(self.conv_1(self._pad(x * mask)))
        x = self.conv_2(self._pad(x * mask))
        return x * mask


class Encoder(nn.Module):
    """`attentions.Encoder`: n_layers × (relative self-attention, LayerNorm, FFN, LayerNorm), post-norm."""

    def __init__(
        self, hidden_channels: int, filter_channels: int, n_heads: int, n_layers: int, kernel_size: int
    ):
        super().__init__()
        self.attn_layers = [
            MultiHeadAttention(hidden_channels, hidden_channels, n_heads) for _ in range(n_layers)
        ]
        self.norm_layers_1 = [LayerNorm(hidden_channels) for _ in range(n_layers)]
        self.ffn_layers = [
            FFN(hidden_channels, hidden_channels, filter_channels, kernel_size) for _ in range(n_layers)
        ]
        self.norm_layers_2 = [LayerNorm(hidden_channels) for _ in range(n_layers)]

    def __call__(self, x: mx.array, mask: mx.array, key_mask: mx.array | None) -> mx.array:
        """x: (B, T, C); mask: (B, T, 1) float; key_mask: (B, T) bool or None when nothing is padded."""
        x = x * mask
        for attn, norm_1, ffn, norm_2 in zip(
            self.attn_layers, self.norm_layers_1, self.ffn_layers, self.norm_layers_2, strict=True
        ):
            x = norm_1(x + attn(x, key_mask))
            x = norm_2(x + ffn(x, mask))
        return x * mask


class TextEncoder(nn.Module):
    """`enc_p`: content (B, T, C_content) [+ coarse pitch (B, T)] -> m, logs (B, T, out_channels), mask."""

    def __init__(
        self,
        content_channels: int,
        out_channels: int,
        hidden_channels: int,
        filter_channels: int,
        n_heads: int,
        n_layers: int,
        kernel_size: int,
        f0: bool,
    ):
        super().__init__()
        self.out_channels = out_channels  # channels of m and of logs
        self.hidden_channels = hidden_channels  # transformer width
        self.emb_phone = nn.Linear(content_channels, hidden_channels)
        if f0:
            self.emb_pitch = nn.Embedding(PITCH_BINS, hidden_channels)
        self.encoder = Encoder(hidden_channels, filter_channels, n_heads, n_layers, kernel_size)
        self.proj = Conv1d(hidden_channels, out_channels * 2, 1)

    def __call__(
        self, content: mx.array, pitch: mx.array | None, lengths: mx.array | None
    ) -> tuple[mx.array, mx.array, mx.array]:
        """content (B, T, C_content) float, pitch (B, T) int in [0, 256) or None, lengths (B,) frames or None
        (all T) -> m (B, T, C_out), logs (B, T, C_out), mask (B, T, 1) float."""
        b, t, _ = content.shape
        x = self.emb_phone(content)
        if pitch is not None:
            if "emb_pitch" not in self:
                raise ValueError("this voice has no pitch embedding (f0=0): pass pitch=None")
            x = x + self.emb_pitch(pitch)
        elif "emb_pitch" in self:
            raise ValueError("this voice needs coarse pitch (f0=1)")
        x = nn.leaky_relu(x * math.sqrt(self.hidden_channels), LRELU_SLOPE)  # (B, T, H)
        if lengths is None:
            key_mask = None
            mask = mx.ones((b, t, 1), dtype=x.dtype)
        else:
            key_mask = mx.arange(t)[None, :] < lengths[:, None]  # (B, T) bool
            mask = key_mask[..., None].astype(x.dtype)  # (B, T, 1)
        x = self.encoder(x * mask, mask, key_mask)
        stats = self.proj(x) * mask
        return stats[..., : self.out_channels], stats[..., self.out_channels :], mask
