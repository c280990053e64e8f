"""1-D convolution layers, channels-last, with a CPU path that stays on BLAS.

MLX's CPU back end runs a plain convolution as im2col + GEMM, but a dilated `conv1d` or a strided
`conv_transpose1d` falls to a scalar loop (tens of times slower). On the CPU these layers therefore compute

* `Conv1d`: a sum over kernel taps of ``(B·T, C_in) @ (C_in, C_out)`` matmuls on shifted views of the padded
  input (a strided convolution first folds `stride` samples into the channel axis, so its taps are whole
  frames; groups become a batched matmul), accumulated with `addmm`;
* `ConvTranspose1d`: one GEMM ``(B·T, C_in) @ (C_in, K·C_out)`` followed by an overlap-add of the
  ``ceil(K / stride)`` blocks of `stride` output samples each tap group writes (pad + reshape, no loop over
  samples).

On GPU back ends they call `mx.conv1d` / `mx.conv_transpose1d`. `set_conv_impl` / `conv_impl` pick the path
("auto": GEMM on the CPU device, MLX elsewhere; "gemm"; "mlx"), so tests can run both on one machine.

Weights are stored in MLX layout: `Conv1d.weight` (C_out, K, C_in / groups), `ConvTranspose1d.weight`
(C_out, K, C_in). The GEMM layout each path needs is derived once per weight array and cached (it is rebuilt
only when the weight array is replaced, e.g. by `load_weights`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import mlx.core as mx
import mlx.nn as nn

IMPLS = ("auto", "gemm", "mlx")  # the selectable computation paths, see the module docstring
_impl = "auto"  # the current process-wide choice


def set_conv_impl(impl: str) -> None:
    """Select the convolution path for every layer: "auto", "gemm" or "mlx"."""
    global _impl
    if impl not in IMPLS:
        raise ValueError(f"conv impl must be one of {IMPLS}, got {impl!r}")
    _impl = impl


def get_conv_impl() -> str:
    """The current selection ("auto", "gemm" or "mlx")."""
    return _impl


@contextlib.contextmanager
def conv_impl(impl: str) -> Iterator[None]:
    """Temporarily select a convolution path (see `set_conv_impl`)."""
    previous = _impl
    set_conv_impl(impl)
    try:
        yield
    finally:
        set_conv_impl(previous)


def _use_gemm() -> bool:
    if _impl == "auto":
        return mx.default_device() == mx.cpu
    return _impl == "gemm"


class _Derived:
    """A weight layout computed from one weight array, kept while that array is the layer's weight."""

    __slots__ = ("source", "value")

    def __init__(self, source: mx.array, value: mx.array):
        self.source = source
        self.value = value


def _cached(layer: nn.Module, build) -> mx.array:
    cache = layer.__dict__.get("_derived")
    if cache is None or cache.source is not layer.weight:
        value = build(layer.weight)
        mx.eval(value)
        cache = _Derived(layer.weight, value)
        object.__setattr__(layer, "_derived", cache)
    return cache.value


class Conv1d(nn.Module):
    """1-D convolution on (B, T, C_in) -> (B, T_out, C_out), PyTorch `Conv1d` semantics (zero padding).

    T_out = (T + 2·padding − dilation·(K − 1) − 1) // stride + 1.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
    ):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"channels {in_channels}->{out_channels} not divisible by groups={groups}")
        self.in_channels = in_channels  # C_in
        self.out_channels = out_channels  # C_out
        self.kernel_size = kernel_size  # K, taps
        self.stride = stride  # output step, in input samples
        self.padding = padding  # zeros added at each end, in samples
        self.dilation = dilation  # spacing between taps, in samples
        self.groups = groups  # channel groups convolved independently
        scale = 1.0 / math.sqrt(in_channels // groups * kernel_size)
        self.weight = mx.random.uniform(-scale, scale, (out_channels, kernel_size, in_channels // groups))
        if bias:
            self.bias = mx.zeros((out_channels,))

    def _gemm_weight(self) -> mx.array:
        """(Q, G, s·C_in/G, C_out/G): tap-group q's matrix per group; Q = ceil(K / s), s = stride."""
        s, g, k = self.stride, self.groups, self.kernel_size
        q = -(-k // s)

        def build(w: mx.array) -> mx.array:
            c_out, _, c_in_g = w.shape
            w = mx.pad(w, [(0, 0), (0, q * s - k), (0, 0)])  # (C_out, Q·s, C_in/G), zero taps appended
            w = w.reshape(g, c_out // g, q, s * c_in_g)  # (G, C_out/G, Q, s·C_in/G)
            return mx.contiguous(w.transpose(2, 0, 3, 1))  # (Q, G, s·C_in/G, C_out/G)

        return _cached(self, build)

    def __call__(self, x: mx.array) -> mx.array:
        """x: (B, T, C_in) -> (B, T_out, C_out)."""
        if _use_gemm() and (self.dilation == 1 or self.stride == 1):
            return self._gemm(x)  # adds the bias in its first matmul
        y = mx.conv1d(x, self.weight, self.stride, self.padding, self.dilation, self.groups)
        if "bias" in self:
            y = y + self.bias
        return y

    def _gemm(self, x: mx.array) -> mx.array:
        b, t, c_in = x.shape
        s, d, g, k, p = self.stride, self.dilation, self.groups, self.kernel_size, self.padding
        w = self._gemm_weight()
        q = w.shape[0]
        t_out = (t + 2 * p - d * (k - 1) - 1) // s + 1
        if t_out <= 0:
            raise ValueError(f"input of {t} samples is shorter than the kernel span")
        # frames of s samples: tap group j of output i reads frame i + j, so zero-pad to whole frames.
        n_frames = t_out + q - 1 if s > 1 else t_out + d * (k - 1)
        right = n_frames * s - t - p
        if p > 0 or right > 0:
            x = mx.pad(x, [(0, 0), (p, max(right, 0)), (0, 0)])
        if right < 0:
            x = x[:, : n_frames * s]
        x = x.reshape(b, n_frames, s * c_in)  # (B, frames, s·C_in)
        if g > 1:
            x = x.reshape(b, n_frames, s, g, c_in // g).transpose(0, 3, 1, 2, 4)
            x = x.reshape(b, g, n_frames, s * c_in // g)  # (B, G, frames, s·C_in/G)
        else:
            x = x[:, None]  # (B, 1, frames, s·C_in)
        step = d if s == 1 else 1
        if "bias" in self:
            bias = self.bias.reshape(g, 1, self.out_channels // g)  # (G, 1, C_out/G)
            y = mx.addmm(bias, x[:, :, 0:t_out], w[0])
        else:
            y = x[:, :, 0:t_out] @ w[0]
        for j in range(1, q):
            y = mx.addmm(y, x[:, :, j * step : j * step + t_out], w[j])
        # y: (B, G, T_out, C_out/G)
        if g > 1:
            return y.transpose(0, 2, 1, 3).reshape(b, t_out, self.out_channels)  # (B, T_out, C_out)
        return y[:, 0]


class ConvTranspose1d(nn.Module):
    """Transposed 1-D convolution on (B, T, C_in) -> (B, T_out, C_out), PyTorch `ConvTranspose1d` semantics.

    T_out = (T − 1)·stride − 2·padding + K + output_padding. Dilation and groups are not needed by RVC and
    not supported.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        output_padding: int = 0,
        bias: bool = True,
    ):
        super().__init__()
        self.in_channels = in_channels  # C_in
        self.out_channels = out_channels  # C_out
        self.kernel_size = kernel_size  # K, taps
        self.stride = stride  # output samples per input sample
        self.padding = padding  # samples cropped at each end of the full output
        self.output_padding = output_padding  # extra samples kept at the end
        scale = 1.0 / math.sqrt(out_channels * kernel_size)
        self.weight = mx.random.uniform(-scale, scale, (out_channels, kernel_size, in_channels))
        if bias:
            self.bias = mx.zeros((out_channels,))

    def _gemm_weight(self) -> mx.array:
        """(C_in, Q·s·C_out): every tap's (C_in, C_out) matrix side by side, taps zero-padded to Q·s."""
        s, k = self.stride, self.kernel_size
        q = -(-k // s)

        def build(w: mx.array) -> mx.array:
            c_out, _, c_in = w.shape
            w = mx.pad(w, [(0, 0), (0, q * s - k), (0, 0)])  # (C_out, Q·s, C_in)
            return mx.contiguous(w.transpose(2, 1, 0).reshape(c_in, q * s * c_out))

        return _cached(self, build)

    def __call__(self, x: mx.array) -> mx.array:
        """x: (B, T, C_in) -> (B, T_out, C_out)."""
        if _use_gemm():
            y = self._gemm(x)
        else:
            y = mx.conv_transpose1d(
                x, self.weight, self.stride, self.padding, output_padding=self.output_padding
            )
        if "bias" in self:
            y = y + self.bias
        return y

    def _gemm(self, x: mx.array) -> mx.array:
        b, t, _ = x.shape
        s, k, p, c_out = self.stride, self.kernel_size, self.padding, self.out_channels
        q = -(-k // s)
        t_out = (t - 1) * s - 2 * p + k + self.output_padding
        y = (x @ self._gemm_weight()).reshape(b, t, q, s, c_out)  # (B, T, Q, s, C_out)
        # input step i, tap group j writes output frame i + j (frames of s samples)
        out = mx.pad(y[:, :, 0], [(0, 0), (0, q - 1), (0, 0), (0, 0)])
        for j in range(1, q):
            out = out + mx.pad(y[:, :, j], [(0, 0), (j, q - 1 - j), (0, 0), (0, 0)])
        out = out.reshape(b, (t + q - 1) * s, c_out)  # (B, frames·s, C_out)
        end = p + t_out
        if end > out.shape[1]:
            out = mx.pad(out, [(0, 0), (0, end - out.shape[1]), (0, 0)])
        return out[:, p:end]
