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

For models that cut long signals into time chunks (on the CPU path for speed, on others for memory):
`Conv1d.valid` (no padding), `Conv1d.region` and `ConvTranspose1d.region` (a range of outputs of the padded
layer, read from a signal padded once) compute a piece without padding or copying the whole signal (with
GEMM taps on the CPU path, `mx.conv1d` elsewhere; `ConvTranspose1d.region` always as a GEMM),
`cpu_streams()` gives CPU streams (one per core, per BLAS thread) to spread independent pieces over (MLX runs
each stream on a thread of its own), and `run_lockstep` runs pieces written as step generators on those
streams side by side.

Weights are stored in MLX layout: `Conv1d.weight` (C_out, K, C_in / groups), `ConvTranspose1d.weight`
(C_out, K, C_in). The GEMM layout each path needs is derived once per weight array and cached (it is rebuilt
only when the weight array is replaced, e.g. by `load_weights`).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Generator, Iterator, Sequence

import mlx.core as mx
import mlx.nn as nn

from rvc_mlx._blas import blas_threads

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


def use_cpu_path() -> bool:
    """True when layers take the CPU (GEMM) path: see `set_conv_impl`."""
    return _use_gemm()


Steps = Generator  # a step generator: yields arrays, takes back same-valued ones, returns a result

_local = threading.local()  # per thread (MLX streams belong to the thread that made them): CPU streams


def cpu_streams() -> list[mx.Stream]:
    """CPU streams for independent pieces of work (e.g. time chunks): MLX runs each stream's work on a thread
    of its own, so pieces on different streams run in parallel. One per core this process may run on, divided
    by the BLAS threads each matmul uses (`rvc_mlx._blas.blas_threads`): on 2 cores with one BLAS thread, 2
    streams; with 2 BLAS threads, 1 (2 streams would put 4 threads on 2 cores: measured 2.2x slower).
    Made once per calling thread (MLX streams are per thread)."""
    streams = getattr(_local, "streams", None)
    if streams is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cores = os.cpu_count() or 1
        streams = [mx.new_stream(mx.cpu) for _ in range(max(1, cores // blas_threads()))]
        _local.streams = streams
    return streams


def run_steps(steps: Steps) -> mx.array:
    """Drive a step generator (see `run_lockstep`) to its end -> its result."""
    try:
        x = next(steps)
        while True:
            x = steps.send(x)
    except StopIteration as done:
        return done.value


def run_lockstep(lanes: Sequence[Steps], streams: Sequence[mx.Stream]) -> list:
    """Run step generators side by side, lane k on streams[k] -> their results.

    A step generator yields the array its next step continues from and takes back an array of the same
    values. Here that array gets a dependency on what the other lanes yielded at the previous step, which
    only orders the graph: MLX evaluates depth-first from the outputs and keeps a bounded backlog of queued
    work, so without it one lane's whole chain would be queued before the next lane's starts and the streams
    would mostly take turns. Interleaved, each stream always has queued work (measured: 1.33x -> 1.95x on
    two cores for chains of 11-tap convolutions).
    """
    results: list = [None] * len(lanes)
    current: list = [None] * len(lanes)
    for k, lane in enumerate(lanes):
        with mx.stream(streams[k]):
            try:
                current[k] = next(lane)
            except StopIteration as done:
                results[k] = done.value
    while any(c is not None for c in current):
        previous = list(current)
        for k, lane in enumerate(lanes):
            if previous[k] is None:
                continue
            with mx.stream(streams[k]):
                others = [p for j, p in enumerate(previous) if j != k and p is not None]
                x = mx.depends(previous[k], others) if others else previous[k]
                try:
                    current[k] = lane.send(x)
                except StopIteration as done:
                    results[k], current[k] = done.value, None
    return results


class _Derived:
    """A weight layout computed from one weight array, kept while that array is the layer's weight."""

    __slots__ = ("source", "value")

    def __init__(self, source: mx.array, value: mx.array):
        self.source = source
        self.value = value


def _cached(layer: nn.Module, build, slot: str = "_derived"):
    cache = layer.__dict__.get(slot)
    if cache is None or cache.source is not layer.weight:
        value = build(layer.weight)
        mx.eval(value)
        cache = _Derived(layer.weight, value)
        object.__setattr__(layer, slot, cache)
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

    def _tap_weights(self) -> list[mx.array]:
        """Stride 1, no groups: each tap's (C_in, C_out) matrix, one array per tap (no slicing per call)."""

        def build(w: mx.array) -> list[mx.array]:
            taps = mx.contiguous(w.transpose(1, 2, 0))  # (K, C_in, C_out)
            return [taps[j] for j in range(self.kernel_size)]

        return _cached(self, build, "_derived_taps")

    def __call__(self, x: mx.array) -> mx.array:
        """x: (B, T, C_in) -> (B, T_out, C_out)."""
        if _use_gemm() and (self.dilation == 1 or self.stride == 1):
            return self._gemm(x)  # adds the bias in its first matmul
        y = mx.conv1d(x, self.weight, self.stride, self.padding, self.dilation, self.groups)
        if "bias" in self:
            y = y + self.bias
        return y

    def _span(self, t_out: int) -> int:
        """Input samples the GEMM taps read to make `t_out` outputs (whole frames of `stride` samples)."""
        s, d, k = self.stride, self.dilation, self.kernel_size
        if s > 1:
            return (t_out - 1 + -(-k // s)) * s
        return t_out + d * (k - 1)

    def _gemm(self, x: mx.array) -> mx.array:
        t, s, d, k, p = x.shape[1], self.stride, self.dilation, self.kernel_size, self.padding
        t_out = (t + 2 * p - d * (k - 1) - 1) // s + 1
        if t_out <= 0:
            raise ValueError(f"input of {t} samples is shorter than the kernel span")
        right = self._span(t_out) - t - p  # zeros to append (negative: samples the taps never read)
        if p > 0 or right > 0:
            x = mx.pad(x, [(0, 0), (p, max(right, 0)), (0, 0)])
        return self._taps(x, t_out)

    def valid(self, x: mx.array) -> mx.array:
        """The convolution without padding (CPU GEMM path): (B, T, C_in) -> (B, T_out, C_out), output i
        reading input samples i·stride + j·dilation, T_out = (T − dilation·(K − 1) − 1) // stride + 1."""
        t_out = (x.shape[1] - self.dilation * (self.kernel_size - 1) - 1) // self.stride + 1
        if t_out <= 0:
            raise ValueError(f"input of {x.shape[1]} samples is shorter than the kernel span")
        return self._taps(x, t_out) if _use_gemm() else self._unpadded(x, t_out)

    def region(self, x: mx.array, pad: int, start: int, stop: int) -> mx.array:
        """Outputs [start, stop) of the padded convolution of a signal given with `pad` zeros on each side.

        x: (B, pad + T + pad, C_in); outputs outside [0, T_out) are computed from the zeros (not zeroed).
        Returns (B, stop − start, C_out). The caller pads enough for the region (ValueError otherwise).
        """
        lo = start * self.stride - self.padding + pad
        last = lo + (stop - start - 1) * self.stride + self.dilation * (self.kernel_size - 1)  # last read
        if lo < 0 or last >= x.shape[1]:
            raise ValueError(f"region [{start}, {stop}) needs more than {pad} samples of padding")
        piece = x[:, lo : lo + self._span(stop - start)]
        return self._taps(piece, stop - start) if _use_gemm() else self._unpadded(piece, stop - start)

    def _unpadded(self, x: mx.array, t_out: int) -> mx.array:
        """`_taps` on `mx.conv1d` (other back ends): the first t_out outputs of the unpadded convolution."""
        y = mx.conv1d(x, self.weight, self.stride, 0, self.dilation, self.groups)[:, :t_out]
        return y + self.bias if "bias" in self else y

    def _taps(self, x: mx.array, t_out: int) -> mx.array:
        """x: (B, T, C_in), the samples the taps read, padded -> (B, t_out, C_out). T may stop short of the
        span by samples only the zero weights appended to a strided kernel would read."""
        b, _, c_in = x.shape
        s, d, g = self.stride, self.dilation, self.groups
        if s == 1 and g == 1:  # the common case in as few graph nodes as possible: slice + matmul per tap
            taps = self._tap_weights()
            if "bias" in self:
                y = mx.addmm(self.bias, x[:, 0:t_out], taps[0])
            else:
                y = x[:, 0:t_out] @ taps[0]
            for j in range(1, self.kernel_size):
                y = mx.addmm(y, x[:, j * d : j * d + t_out], taps[j])
            return y  # (B, T_out, C_out)
        w = self._gemm_weight()
        q = w.shape[0]
        n_frames = self._span(t_out) // s
        if x.shape[1] > n_frames * s:
            x = x[:, : n_frames * s]
        elif x.shape[1] < n_frames * s:  # the last frame's taps past the kernel (zero weights)
            x = mx.pad(x, [(0, 0), (0, n_frames * s - x.shape[1]), (0, 0)])
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

    def region(self, x: mx.array, pad: int, start: int, stop: int) -> mx.array:
        """Outputs [start, stop) of the transposed convolution of an input given with `pad` zero steps on
        each side: x (B, pad + T + pad, C_in) -> (B, stop − start, C_out) (CPU GEMM path).

        Outputs outside [0, T_out) get only the bias (not zeroed). The caller pads enough for the region.
        """
        b = x.shape[0]
        s, k, p, c_out = self.stride, self.kernel_size, self.padding, self.out_channels
        q = -(-k // s)
        f0, f1 = (start + p) // s, -(-(stop + p) // s)  # frames of s samples of the uncropped output
        n = f1 - f0
        lo, hi = f0 - (q - 1) + pad, f1 + pad  # input steps writing those frames
        if lo < 0 or hi > x.shape[1]:
            raise ValueError(f"region [{start}, {stop}) needs more than {pad} frames of padding")
        y = (x[:, lo:hi] @ self._gemm_weight()).reshape(b, hi - lo, q, s, c_out)  # (B, n+q−1, Q, s, C_out)
        out = y[:, q - 1 : q - 1 + n, 0]  # frame f gets tap group j of input step f − j
        for j in range(1, q):
            out = out + y[:, q - 1 - j : q - 1 - j + n, j]
        out = out.reshape(b, n * s, c_out)  # (B, n·s, C_out)
        first = start + p - f0 * s
        out = out[:, first : first + stop - start]
        if "bias" in self:
            out = out + self.bias
        return out
