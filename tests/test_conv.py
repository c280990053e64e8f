"""Conv1d / ConvTranspose1d: the BLAS (GEMM) path against mx.conv1d / mx.conv_transpose1d and torch."""

import threading

import rvc_mlx  # noqa: F401  (loads OpenBLAS before mlx.core)

# isort: split
import mlx.core as mx
import numpy as np
import pytest
import torch
from conftest import rel_err

from rvc_mlx.models.conv import (
    Conv1d,
    ConvTranspose1d,
    conv_impl,
    cpu_streams,
    get_conv_impl,
    run_lockstep,
    run_steps,
    set_conv_impl,
)

TOL = 1e-5  # float32 GEMM vs direct convolution: different summation order only

CONV_CASES = [
    # (C_in, C_out, K, stride, padding, dilation, groups)
    (8, 6, 3, 1, 1, 1, 1),  # plain "same" conv
    (8, 6, 3, 1, 5, 5, 1),  # dilated (HiFi-GAN resblock)
    (16, 16, 11, 1, 25, 5, 1),  # long dilated kernel
    (1, 16, 96, 48, 24, 1, 1),  # NSF noise_conv: 1 channel, kernel 2·stride
    (8, 8, 7, 2, 3, 1, 2),  # strided + grouped
    (6, 9, 5, 3, 0, 1, 3),  # stride not dividing K, no padding
    (12, 12, 8, 1, 4, 1, 4),  # grouped, even kernel (HuBERT positional conv style)
    (4, 4, 1, 1, 0, 1, 1),  # pointwise
]

CONVT_CASES = [
    # (C_in, C_out, K, stride, padding, output_padding)
    (8, 6, 16, 10, 3, 0),  # RVC 40k first upsample
    (8, 6, 16, 6, 5, 0),  # v1 48k: K not a multiple of stride
    (8, 6, 24, 12, 6, 0),  # v2 48k
    (4, 3, 4, 2, 1, 0),
    (4, 3, 5, 2, 1, 1),  # output padding
    (3, 2, 3, 1, 1, 0),  # stride 1
]


def _run(layer, x, impl):
    with conv_impl(impl):
        return np.array(layer(mx.array(x)))


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv1d_gemm_equals_mlx_and_torch(case, rng):
    c_in, c_out, k, s, p, d, g = case
    x = rng.standard_normal((2, 57, c_in)).astype(np.float32)
    layer = Conv1d(c_in, c_out, k, stride=s, padding=p, dilation=d, groups=g)
    layer.bias = mx.array(rng.standard_normal(c_out).astype(np.float32))
    ours = _run(layer, x, "gemm")
    direct = np.array(mx.conv1d(mx.array(x), layer.weight, s, p, d, g) + layer.bias)
    assert rel_err(ours, direct) < TOL
    assert rel_err(_run(layer, x, "mlx"), direct) == 0.0

    ref = torch.nn.functional.conv1d(
        torch.from_numpy(x).transpose(1, 2),
        torch.from_numpy(np.array(layer.weight).transpose(0, 2, 1).copy()),
        torch.from_numpy(np.array(layer.bias)),
        s, p, d, g,
    ).transpose(1, 2).numpy()
    assert ours.shape == ref.shape
    assert rel_err(ours, ref) < TOL


@pytest.mark.parametrize("case", CONVT_CASES)
def test_conv_transpose1d_gemm_equals_mlx_and_torch(case, rng):
    c_in, c_out, k, s, p, op = case
    x = rng.standard_normal((2, 13, c_in)).astype(np.float32)
    layer = ConvTranspose1d(c_in, c_out, k, stride=s, padding=p, output_padding=op)
    layer.bias = mx.array(rng.standard_normal(c_out).astype(np.float32))
    ours = _run(layer, x, "gemm")
    direct = np.array(
        mx.conv_transpose1d(mx.array(x), layer.weight, s, p, output_padding=op) + layer.bias
    )
    assert ours.shape == direct.shape
    assert rel_err(ours, direct) < TOL
    assert rel_err(_run(layer, x, "mlx"), direct) == 0.0

    w_torch = np.array(layer.weight).transpose(2, 0, 1).copy()  # (C_out, K, C_in) -> torch (C_in, C_out, K)
    ref = torch.nn.functional.conv_transpose1d(
        torch.from_numpy(x).transpose(1, 2),
        torch.from_numpy(w_torch),
        torch.from_numpy(np.array(layer.bias)),
        s, p, op,
    ).transpose(1, 2).numpy()
    assert rel_err(ours, ref) < TOL


@pytest.mark.parametrize("impl", ["gemm", "mlx"])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv1d_valid_and_region_equal_the_padded_conv(case, impl, rng):
    """`valid` (no padding) and `region` (outputs [start, stop) of a pre-padded signal) against mx.conv1d, on
    the CPU path's GEMM taps and on the other back ends' `mx.conv1d` pieces."""
    c_in, c_out, k, s, p, d, g = case
    x = rng.standard_normal((2, 157, c_in)).astype(np.float32)
    layer = Conv1d(c_in, c_out, k, stride=s, padding=p, dilation=d, groups=g)
    layer.bias = mx.array(rng.standard_normal(c_out).astype(np.float32))
    with conv_impl(impl):
        unpadded = np.array(layer.valid(mx.array(x)))
    assert rel_err(unpadded, np.array(mx.conv1d(mx.array(x), layer.weight, s, 0, d, g) + layer.bias)) < TOL
    full = np.array(mx.conv1d(mx.array(x), layer.weight, s, p, d, g) + layer.bias)
    pad = d * k + s + p
    padded = mx.pad(mx.array(x), [(0, 0), (pad, pad), (0, 0)])
    t_out = full.shape[1]
    for start, stop in ((0, t_out), (t_out // 3, 2 * t_out // 3 + 1), (t_out - 1, t_out)):
        with conv_impl(impl):
            got = np.array(layer.region(padded, pad, start, stop))
        assert got.shape == full[:, start:stop].shape
        assert rel_err(got, full[:, start:stop]) < TOL
    with pytest.raises(ValueError, match="padding"):
        layer.region(padded, pad, -pad - 1, 4)


@pytest.mark.parametrize("case", CONVT_CASES)
def test_conv_transpose1d_region_equals_the_full_output(case, rng):
    c_in, c_out, k, s, p, op = case
    x = rng.standard_normal((2, 13, c_in)).astype(np.float32)
    layer = ConvTranspose1d(c_in, c_out, k, stride=s, padding=p, output_padding=op)
    layer.bias = mx.array(rng.standard_normal(c_out).astype(np.float32))
    full = np.array(mx.conv_transpose1d(mx.array(x), layer.weight, s, p, output_padding=op) + layer.bias)
    pad = k // s + 3
    padded = mx.pad(mx.array(x), [(0, 0), (pad, pad), (0, 0)])
    t_out = full.shape[1]
    for start, stop in ((0, t_out), (1, 6), (t_out // 2, t_out)):
        got = np.array(layer.region(padded, pad, start, stop))
        assert got.shape == full[:, start:stop].shape
        assert rel_err(got, full[:, start:stop]) < TOL


def test_replacing_the_weight_rebuilds_the_gemm_layout(rng):
    layer = Conv1d(4, 5, 3, padding=1, bias=False)
    x = rng.standard_normal((1, 20, 4)).astype(np.float32)
    first = _run(layer, x, "gemm")
    layer.weight = layer.weight * 2.0
    second = _run(layer, x, "gemm")
    np.testing.assert_allclose(second, 2.0 * first, rtol=1e-6, atol=1e-6)

    up = ConvTranspose1d(4, 3, 4, stride=2, padding=1, bias=False)
    first = _run(up, x, "gemm")
    up.update({"weight": -up.weight})
    np.testing.assert_allclose(_run(up, x, "gemm"), -first, rtol=1e-6, atol=1e-6)


def test_impl_selection():
    assert get_conv_impl() == "auto"
    with conv_impl("mlx"):
        assert get_conv_impl() == "mlx"
    assert get_conv_impl() == "auto"
    with pytest.raises(ValueError):
        set_conv_impl("fast")
    layer = Conv1d(3, 3, 3)
    assert set(dict(layer.parameters())) == {"weight", "bias"}  # the cached layout is not a parameter
    layer(mx.zeros((1, 8, 3)))
    assert set(dict(layer.parameters())) == {"weight", "bias"}


def test_lockstep_lanes_give_what_each_lane_gives_alone(rng):
    """Step generators of different lengths, run side by side on the CPU streams and one by one."""
    w = mx.array(rng.standard_normal((16, 16)).astype(np.float32) / 4)

    def chain(x, steps):
        for _ in range(steps):
            x = yield mx.tanh(x @ w)
        return x * 2.0

    starts = [mx.array(rng.standard_normal((5, 16)).astype(np.float32)) for _ in range(3)]
    alone = [np.array(run_steps(chain(x, n))) for x, n in zip(starts, (4, 1, 6), strict=True)]
    streams = [cpu_streams()[k % len(cpu_streams())] for k in range(3)]
    together = run_lockstep([chain(x, n) for x, n in zip(starts, (4, 1, 6), strict=True)], streams)
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_array_equal(a, np.array(b))
    assert run_lockstep([chain(starts[0], 0)], streams[:1])[0].shape == (5, 16)


def test_cpu_streams_work_from_another_thread(rng):
    """MLX streams belong to the thread that made them: a layer called from a second thread gets its own."""
    layer = Conv1d(4, 4, 3, padding=1)
    x = mx.array(rng.standard_normal((1, 9, 4)).astype(np.float32))
    mx.eval(layer.parameters())  # evaluated here: a lazy array can only be evaluated by its own thread
    here = cpu_streams()
    results = {}

    def work():
        with mx.stream(cpu_streams()[-1]):
            results["y"] = np.array(layer(x))
        results["own"] = cpu_streams()[0] is not here[0]

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    assert results["own"]
    np.testing.assert_allclose(results["y"], np.array(layer(x)), rtol=1e-6, atol=1e-6)
