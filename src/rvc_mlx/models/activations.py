"""Element-wise functions written from multiplies and adds, for MLX's CPU back end.

MLX's CPU transcendental functions (exp, erf) are scalar and slow on x86 (exp ~20 ns per element, ~50x an
add); these polynomial forms vectorise, and they are accurate to a few float32 ulp. At the end: in-place numpy
forms (GELU, softmax) for evaluated buffers, and `drive_lanes`, which interleaves such numpy passes with MLX
work queued on several CPU streams.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import mlx.core as mx
import numpy as np

# MLX's CPU exp (and so sigmoid) costs ~20 ns per element on x86, ~50x an add: on the CPU back end the
# sigmoids use an exp built from arithmetic instead: x = n ln2 + r (Cody-Waite, ln2 split so n * _LN2_HI
# is exact), e^r by its degree-7 Taylor series (|r| <= ln2 / 2, truncation < 6e-9 relative), 2^n from the
# exponent bits. Error ~1 ulp, like mx.exp.
_LOG2E = 1.4426950408889634
_LN2_HI = 0.693359375
_LN2_LO = -2.12194440e-4
_EXP_TAYLOR = (1.0, 1.0, 1 / 2, 1 / 6, 1 / 24, 1 / 120, 1 / 720, 1 / 5040)


def exp_arith(x: mx.array) -> mx.array:
    """e^x (float32) from multiplies and adds; inputs clamped to [-87, 88] (normal float32 results)."""
    x = mx.clip(x, -87.0, 88.0)
    n = mx.floor(x * _LOG2E + 0.5)
    r = (x - n * _LN2_HI) - n * _LN2_LO
    poly = mx.array(_EXP_TAYLOR[-1], dtype=x.dtype)
    for c in reversed(_EXP_TAYLOR[:-1]):
        poly = poly * r + c
    two_n = mx.left_shift(n.astype(mx.int32) + 127, 23).view(mx.float32)  # 2^n from its exponent bits
    return poly * two_n


def sigmoid(x: mx.array) -> mx.array:
    """mx.sigmoid, with the arithmetic exp on the CPU back end (float32)."""
    if mx.default_device().type == mx.cpu and x.dtype == mx.float32:
        return 1.0 / (1.0 + exp_arith(-x))
    return mx.sigmoid(x)


def softmax_arith(x: mx.array) -> mx.array:
    """Softmax over the last axis with the arithmetic exp (float32)."""
    e = exp_arith(x - mx.max(x, axis=-1, keepdims=True))
    return e / mx.sum(e, axis=-1, keepdims=True)


_softmax_cpu = mx.compile(softmax_arith)  # one fused pass per reduction (compiled only for the CPU)


def softmax(x: mx.array) -> mx.array:
    """mx.softmax over the last axis; on the CPU back end (float32) compiled with the arithmetic exp."""
    if mx.default_device().type == mx.cpu and x.dtype == mx.float32:
        return _softmax_cpu(x)
    return mx.softmax(x, axis=-1)


# tanh: (1 − e) / (1 + e) with e = e^(−2|x|) from the arithmetic exp, odd-signed; below |x| = 0.4, where
# 1 − e cancels, x·(1 + x²·P(x²)) with P the Taylor series to x^15 (truncation < 2e-10 relative). Max error
# 2.1 ulp over [−12, 12] against float64 (mx.tanh: 2.1 ulp).
_TANH_SMALL = 0.4
_TANH_TAYLOR = (-1 / 3, 2 / 15, -17 / 315, 62 / 2835, -1382 / 155925, 21844 / 6081075, -929569 / 638512875)


def tanh_arith(x: mx.array) -> mx.array:
    """tanh(x) (float32) from multiplies and adds (see above)."""
    a = mx.abs(x)
    e = exp_arith(-2.0 * a)
    big = (1.0 - e) / (1.0 + e)
    t = x * x
    p = mx.array(_TANH_TAYLOR[-1], dtype=x.dtype)
    for c in reversed(_TANH_TAYLOR[:-1]):
        p = p * t + c
    return mx.where(a < _TANH_SMALL, x * (1.0 + t * p), mx.where(x < 0, -big, big))


def tanh(x: mx.array) -> mx.array:
    """mx.tanh, with the arithmetic form on the CPU back end (float32)."""
    if mx.default_device().type == mx.cpu and x.dtype == mx.float32:
        return tanh_arith(x)
    return mx.tanh(x)


# erf(u) ~ u * P(u^2) / Q(u^2) on [-4, 4] (|erf| rounds to 1 beyond): the float32 rational approximation used
# by Eigen and XLA, within a few ulp. MLX's own CPU erf is ~3x slower than this fused polynomial.
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
          -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
          -1.42647390514189e-02)


def erf_gelu(x: mx.array) -> mx.array:
    """Exact (erf) GELU, x * Phi(x), as torch.nn.GELU(), with a rational erf."""
    u = mx.minimum(mx.maximum(x * (1 / math.sqrt(2)), -4.0), 4.0)
    u2 = u * u
    p = _ERF_P[0]
    for c in _ERF_P[1:]:
        p = p * u2 + c
    q = _ERF_Q[0]
    for c in _ERF_Q[1:]:
        q = q * u2 + c
    return x * (0.5 + 0.5 * (u * p / q))


# In-place numpy forms for MLX's CPU back end, applied to an evaluated array's own buffer (np.asarray of an
# mx.array is a writable view): numpy's ufuncs are vectorised, MLX's CPU element-wise kernels are not
# (measured on x86: exact GELU 5x faster, softmax's exp 16x). Rows go in blocks that stay in cache.
_INPLACE_BLOCK = 1 << 16  # elements per block of the in-place GELU (measured: 1.4x faster than 1 << 14)
_ERF_P32 = tuple(float(f) for f in _ERF_P)
_ERF_Q32 = tuple(float(f) for f in _ERF_Q)


def gelu_inplace_np(x, shift=None, scale=None, bias=None) -> None:
    """x[...] = erf_gelu((x - shift) * scale + bias), each of shift, scale, bias optional (None: skipped).

    x: a C-contiguous float32 numpy array (..., C), written in place; shift, scale, bias: (C,) float32.
    The same rational erf as `erf_gelu`, so the two agree to the last bit when no affine part is given.
    """
    c = x.shape[-1]
    rows = x.view()
    rows.shape = (-1, c)  # (R, C), a view (raises rather than copy)
    step = max(1, _INPLACE_BLOCK // c)
    buf = np.empty((4, step, c), np.float32)
    for start in range(0, rows.shape[0], step):
        xs = rows[start : start + step]  # (r, C) view into x
        u, u2, p, q = (b[: xs.shape[0]] for b in buf)
        if shift is not None:
            xs -= shift
        if scale is not None:
            xs *= scale
        if bias is not None:
            xs += bias
        np.multiply(xs, np.float32(1 / math.sqrt(2)), out=u)
        np.clip(u, -4.0, 4.0, out=u)
        np.multiply(u, u, out=u2)
        np.multiply(u2, np.float32(_ERF_P32[0]), out=p)
        p += np.float32(_ERF_P32[1])
        for coef in _ERF_P32[2:]:
            p *= u2
            p += np.float32(coef)
        np.multiply(u2, np.float32(_ERF_Q32[0]), out=q)
        q += np.float32(_ERF_Q32[1])
        for coef in _ERF_Q32[2:]:
            q *= u2
            q += np.float32(coef)
        p *= u
        p /= q
        p *= np.float32(0.5)
        p += np.float32(0.5)
        xs *= p


def softmax_inplace_np(x) -> None:
    """x[...] = softmax(x) over the last axis, in place on a C-contiguous float32 numpy array."""
    x /= exp_shifted_inplace_np(x)


def exp_shifted_inplace_np(x):
    """x[...] = exp(x - max(x)) over the last axis, in place -> the row sums (..., 1): softmax's numerator and
    denominator, for callers that divide a smaller product (p·v) instead of x."""
    np.subtract(x, np.max(x, axis=-1, keepdims=True), out=x)
    np.exp(x, out=x)
    return np.sum(x, axis=-1, keepdims=True)


_numpy_workers: list = []  # CPU path: the thread pool that runs the lanes' numpy passes (made on first use)


def _numpy_pool(size: int) -> ThreadPoolExecutor:
    """Threads for the lanes' in-place numpy passes (numpy's ufuncs and reductions release the GIL)."""
    if not _numpy_workers or _numpy_workers[0]._max_workers < size:
        _numpy_workers[:] = [ThreadPoolExecutor(size, thread_name_prefix="rvc-mlx-numpy")]
    return _numpy_workers[0]


def drive_lanes(lanes: list, streams: list) -> list:
    """Run lane generators side by side, lane k's MLX work on streams[k] -> their return values.

    A lane yields (array, fn): the array is evaluated (queued with `async_eval` as soon as it is yielded),
    then fn(numpy view of its buffer) rewrites it in place and fn's result is sent back to the lane. The
    array must be a fresh op output (a matmul or a concatenation) that nothing else shares. The lanes step
    together: each lane's fn runs on a worker thread as soon as its array is ready, so the numpy passes of
    the lanes run in parallel (and beside the matmuls still queued), while MLX is called from this thread.
    """
    current: list = [None] * len(lanes)
    results: list = [None] * len(lanes)

    def advance(k: int, value) -> None:
        with mx.stream(streams[k]):
            try:
                current[k] = lanes[k].send(value)
            except StopIteration as done:
                current[k], results[k] = None, done.value
                return
            mx.async_eval(current[k][0])

    for k in range(len(lanes)):
        advance(k, None)
    pool = _numpy_pool(len(lanes)) if len(lanes) > 1 else None
    while any(c is not None for c in current):
        pending = {}
        for k, item in enumerate(current):
            if item is not None:
                array, fn = item
                mx.eval(array)
                view = np.asarray(array)
                assert view.flags.c_contiguous and view.flags.writeable and view.dtype == np.float32
                pending[k] = pool.submit(fn, view) if pool else fn(view)
        for k, value in pending.items():
            advance(k, value.result() if pool else value)
    return results
