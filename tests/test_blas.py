import os
import subprocess
import sys


def _run(code: str, **env) -> str:
    e = dict(os.environ, **env)
    done = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, check=True)
    return done.stdout


def test_import_loads_fast_blas_on_linux_cpu():
    code = ("import rvc_mlx; from rvc_mlx import _blas; print(_blas.loaded_from); "
            "print(_blas.matmul_gflops(512, 5))")
    lib, fast = _run(code).split("\n")[:2]
    if sys.platform.startswith("linux"):
        assert lib != "None"
        # Relative to MLX's bundled reference BLAS measured the same way (robust on a loaded machine):
        # OpenBLAS is ~35x faster on one core here, netlib ~6 GFLOP/s.
        slow = _run(code, RVC_MLX_BLAS="off").split("\n")[1]
        assert float(fast) > 3 * float(slow), (fast, slow)


def test_off_switch_and_slow_warning():
    if not sys.platform.startswith("linux"):
        return
    out = _run("import warnings, rvc_mlx; from rvc_mlx import _blas; print(_blas.loaded_from); "
               "import mlx.core as mx\n"
               "with warnings.catch_warnings(record=True) as w:\n"
               "    warnings.simplefilter('always'); _blas.warn_if_slow()\n"
               "print(len(w))", RVC_MLX_BLAS="off")
    assert out.split("\n")[0] == "None"
    assert out.split("\n")[1] == "0"  # off also silences the throughput check


def test_import_does_not_import_torch():
    out = _run("import sys, rvc_mlx; print('torch' in sys.modules)")
    assert out.strip() == "False"


def test_slow_throughput_warns():
    if not sys.platform.startswith("linux"):
        return
    out = _run("import warnings, rvc_mlx; from rvc_mlx import _blas; import mlx.core as mx\n"
               "_blas.SLOW_GFLOPS = 1e12  # no CPU reaches this: the check must fire\n"
               "with warnings.catch_warnings(record=True) as w:\n"
               "    warnings.simplefilter('always'); _blas.warn_if_slow()\n"
               "print(len(w), w[0].message if w else '')")
    assert out.startswith("1 ") and "GFLOP/s" in out
