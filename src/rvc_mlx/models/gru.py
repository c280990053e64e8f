"""One-layer bidirectional GRU (RMVPE's), with a fused recurrence kernel on CUDA.

The input projection of every frame is one GEMM; only the recurrence ``h_t = GRU(x_t, h_{t-1})`` is
sequential. Two implementations of the recurrence, equal up to float32 rounding:

- ``plain``: MLX ops, ``GRU_UNROLL`` steps per compiled call (every back end; the one tests run on CPU);
- ``cuda``: one kernel launch for the whole sequence on the CUDA back end: a thread block per direction
  and batch row, a thread per gate column, the hidden state in shared memory. The plain path costs a few
  kernel launches per step (thousands per minute of audio); this one costs one.

``RVC_MLX_GRU=plain`` forces the plain path everywhere.
"""

from __future__ import annotations

import os

import mlx.core as mx
import mlx.nn as nn

GRU_UNROLL = 16  # time steps per compiled call of the plain recurrence
GRU_KERNEL_MAX_HIDDEN = 341  # the kernel runs 3 * hidden threads per block (at most 1024 on CUDA)


@mx.compile
def _gru_steps(h: mx.array, xi: mx.array, w_hh: mx.array, b_hn: mx.array) -> mx.array:
    """K steps of both directions at once: h (2, B, H), xi (K, 2, B, 3H) -> states (K, 2, B, H)."""
    hid = h.shape[-1]
    states = []
    for k in range(xi.shape[0]):
        gh = h @ w_hh  # (2, B, 3H)
        r = mx.sigmoid(xi[k, ..., :hid] + gh[..., :hid])
        z = mx.sigmoid(xi[k, ..., hid : 2 * hid] + gh[..., hid : 2 * hid])
        n = mx.tanh(xi[k, ..., 2 * hid :] + r * (gh[..., 2 * hid :] + b_hn))
        h = n + z * (h - n)
        states.append(h)
    return mx.stack(states)


def recurrence_plain(xi: mx.array, w_hh: mx.array, b_hn: mx.array) -> mx.array:
    """xi (T, 2, B, 3H) (backward direction in reversed time) -> states (T, 2, B, H)."""
    _, _, b, three_h = xi.shape
    h = mx.zeros((2, b, three_h // 3), dtype=xi.dtype)
    outs = []
    for start in range(0, xi.shape[0], GRU_UNROLL):
        steps = _gru_steps(h, xi[start : start + GRU_UNROLL], w_hh, b_hn)  # (K, 2, B, H)
        h = steps[-1]
        outs.append(steps)
        if len(outs) % 8 == 0:
            mx.eval(h)  # keep the lazy graph short
    return mx.concatenate(outs, axis=0)


# Thread c of block (d, b) owns gate column c: gh[c] = sum_i h[i] * w_hh[d, i, c] (coalesced over c), then
# the first H threads update h[c] from the r, z, n columns c, H + c, 2H + c. PyTorch's gate order r, z, n;
# the hidden r/z biases are folded into xi, the hidden n bias stays inside the reset gate.
_KERNEL_SOURCE = """
    const int c = threadIdx.x;
    const int d = blockIdx.x / NB;
    const int b = blockIdx.x % NB;
    const int steps = xi_shape[0];
    __shared__ float h[NH];
    __shared__ float gh[3 * NH];
    if (c < NH) h[c] = 0.0f;
    __syncthreads();
    const float* w = w_hh + (size_t)d * NH * 3 * NH;
    const float bn = c < NH ? b_hn[d * NH + c] : 0.0f;
    for (int t = 0; t < steps; ++t) {
        float acc = 0.0f;
        for (int i = 0; i < NH; ++i) acc = fmaf(h[i], w[i * 3 * NH + c], acc);
        gh[c] = acc;
        __syncthreads();
        if (c < NH) {
            const size_t row = ((size_t)t * 2 + d) * NB + b;
            const float* x = xi + row * 3 * NH;
            float r = 1.0f / (1.0f + expf(-(x[c] + gh[c])));
            float z = 1.0f / (1.0f + expf(-(x[NH + c] + gh[NH + c])));
            float n = tanhf(x[2 * NH + c] + r * (gh[2 * NH + c] + bn));
            float hn = n + z * (h[c] - n);
            out[row * NH + c] = hn;
            h[c] = hn;
        }
        __syncthreads();
    }
"""
_kernel = None


def _cuda_kernel():
    global _kernel
    if _kernel is None:
        _kernel = mx.fast.cuda_kernel(name="rvc_mlx_bigru", input_names=["xi", "w_hh", "b_hn"],
                                      output_names=["out"], source=_KERNEL_SOURCE)
    return _kernel


def recurrence_cuda(xi: mx.array, w_hh: mx.array, b_hn: mx.array) -> mx.array:
    """`recurrence_plain` as one CUDA kernel launch (float32)."""
    t, _, b, three_h = xi.shape
    hid = three_h // 3
    f32 = [a if a.dtype == mx.float32 else a.astype(mx.float32) for a in (xi, w_hh, b_hn)]  # it reads float32
    return _cuda_kernel()(
        inputs=f32,
        template=[("NH", hid), ("NB", b)],
        grid=(2 * b * three_h, 1, 1),
        threadgroup=(three_h, 1, 1),
        output_shapes=[(t, 2, b, hid)],
        output_dtypes=[mx.float32],
    )[0].astype(xi.dtype)  # (T, 2, B, H)


def cuda_available() -> bool:
    """MLX was built with its CUDA back end and sees a GPU (False on Metal and CPU-only builds)."""
    cuda = getattr(mx, "cuda", None)
    return bool(cuda is not None and cuda.is_available())


def cuda_kernel_usable(hidden: int) -> bool:
    """The fused kernel applies: CUDA back end, GPU default device, hidden size that fits one block."""
    if os.environ.get("RVC_MLX_GRU", "").lower() == "plain" or hidden > GRU_KERNEL_MAX_HIDDEN:
        return False
    return mx.default_device() == mx.gpu and cuda_available()


class BiGRU(nn.Module):
    """One-layer bidirectional GRU (PyTorch gate order r, z, n): (B, T, D) -> (B, T, 2H).

    ``w_ih`` (D, 6H) = [forward | backward] input weights, ``b_ih`` (6H,) with the hidden r/z biases added,
    ``w_hh`` (2, H, 3H), ``b_hn`` (2, 1, H) (the hidden n bias stays inside the reset gate).
    """

    def __init__(self, d_in: int, hidden: int):
        super().__init__()
        self.w_ih = mx.zeros((d_in, 6 * hidden))
        self.b_ih = mx.zeros((6 * hidden,))
        self.w_hh = mx.zeros((2, hidden, 3 * hidden))
        self.b_hn = mx.zeros((2, 1, hidden))

    def __call__(self, x: mx.array, kernel: str | None = None) -> mx.array:
        """``kernel``: "plain", "cuda" or None (the kernel where `cuda_kernel_usable`)."""
        b, t, _ = x.shape
        hid = self.w_hh.shape[1]
        xi = (x @ self.w_ih + self.b_ih).reshape(b, t, 2, 3 * hid)  # (B, T, 2, 3H): all frames, one GEMM
        xi = mx.stack([xi[:, :, 0], xi[:, ::-1, 1]], axis=0)  # (2, B, T, 3H), backward in reversed time
        xi = xi.transpose(2, 0, 1, 3)  # (T, 2, B, 3H)
        if kernel is None:
            kernel = "cuda" if cuda_kernel_usable(hid) else "plain"
        recurrence = recurrence_cuda if kernel == "cuda" else recurrence_plain
        out = recurrence(xi, self.w_hh, self.b_hn)  # (T, 2, B, H)
        fwd = out[:, 0].transpose(1, 0, 2)  # (B, T, H)
        bwd = out[::-1, 1].transpose(1, 0, 2)  # (B, T, H), back in time order
        return mx.concatenate([fwd, bwd], axis=-1)  # (B, T, 2H)
