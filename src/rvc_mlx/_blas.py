"""Fast BLAS for MLX's Linux CPU back end.

The ``mlx-cpu`` wheel links the netlib reference BLAS, ~35x slower than OpenBLAS on a 1024² fp32 matmul.
MLX resolves ``cblas_sgemm`` through the dynamic linker, so an OpenBLAS loaded with ``RTLD_GLOBAL``
*before* ``mlx.core`` is imported takes over. This module finds one (in this order):

1. ``RVC_MLX_BLAS=/path/to/libblas.so``: exactly that library;
2. ``cmeel-openblas`` (``cmeel.prefix/lib/libopenblas.so.0``; needs the system ``libgfortran5``);
3. the OpenBLAS bundled in ``faiss-cpu`` (its gfortran/gomp siblings are preloaded by path);
4. a system ``libopenblas.so.0``.

``RVC_MLX_BLAS=off`` disables all of it. Nothing happens on macOS (Accelerate) or when ``mlx.core`` is
already imported (too late to matter).

Threads: OpenBLAS gets ``RVC_MLX_BLAS_THREADS`` threads, by default one fewer than the machine's cores (at
least one); for the OpenMP build in faiss-cpu this sets ``OMP_NUM_THREADS`` unless it is already set.
Measured on a 2-core machine with other work running, HuBERT on 10 s of audio took 2.7 s with one BLAS
thread and 7.5 s with two: BLAS threads that wait by spinning starve the thread that feeds them.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.metadata
import os
import sys
import sysconfig
import time
import warnings

ENV_VAR = "RVC_MLX_BLAS"
THREADS_ENV_VAR = "RVC_MLX_BLAS_THREADS"

# Below this many GFLOP/s a 512² fp32 matmul is taken to run on the reference BLAS.
SLOW_GFLOPS = 8.0

loaded_from: str | None = None  # the library that was loaded, for `rvc-mlx doctor`


def _site_dirs() -> list[str]:
    dirs = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    dirs.update(p for p in sys.path if p.endswith("site-packages"))
    return sorted(d for d in dirs if os.path.isdir(d))


def _has_distribution(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def blas_threads() -> int:
    """Threads OpenBLAS is given: $RVC_MLX_BLAS_THREADS, else one fewer than the cores (at least 1)."""
    value = os.environ.get(THREADS_ENV_VAR, "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return max(1, (os.cpu_count() or 1) - 1)


def _load(path: str) -> bool:
    try:
        lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        lib.cblas_sgemm  # noqa: B018 - the plain name MLX calls must be exported
    except (OSError, AttributeError):
        return False
    if hasattr(lib, "openblas_set_num_threads"):
        lib.openblas_set_num_threads(ctypes.c_int(blas_threads()))
    return True


def _candidates() -> list[tuple[str, list[str]]]:
    """(library, libraries to preload first) pairs, best first."""
    found: list[tuple[str, list[str]]] = []
    for site in _site_dirs():
        found += [(p, []) for p in glob.glob(os.path.join(site, "cmeel.prefix", "lib", "libopenblas.so.0"))]
    for site in _site_dirs():
        libs = os.path.join(site, "faiss_cpu.libs")
        for blas in sorted(glob.glob(os.path.join(libs, "libopenblas*.so*"))):
            pre = [p for pat in ("libquadmath*", "libgfortran*", "libgomp*")
                   for p in sorted(glob.glob(os.path.join(libs, pat)))]
            found.append((blas, pre))
    found += [(name, []) for name in ("libopenblas.so.0", "libopenblas.so")]
    return found


def ensure_fast_blas() -> str | None:
    """Load an OpenBLAS for MLX if this is Linux and MLX isn't imported yet; returns its path or None."""
    global loaded_from
    setting = os.environ.get(ENV_VAR, "").strip()
    if not sys.platform.startswith("linux") or setting.lower() in ("off", "0", "none"):
        return None
    if "mlx.core" in sys.modules or loaded_from is not None:
        return loaded_from
    if not setting and not _has_distribution("mlx-cpu"):
        return None  # not the CPU wheel (CUDA builds bring their own BLAS)
    if setting:
        if not _load(setting):
            warnings.warn(f"{ENV_VAR}={setting!r} could not be loaded or has no cblas_sgemm", stacklevel=2)
            return None
        loaded_from = setting
        return setting
    for lib, preload in _candidates():
        if any(os.path.basename(p).startswith("libgomp") for p in preload):
            # An OpenMP build takes its thread count from the environment when libgomp loads (a later
            # omp_set_num_threads only reaches the calling thread, not MLX's worker).
            os.environ.setdefault("OMP_NUM_THREADS", str(blas_threads()))
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle threads sleep rather than spin
        try:
            for p in preload:
                ctypes.CDLL(p, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        if _load(lib):
            loaded_from = lib
            return lib
    return None


def matmul_gflops(n: int = 512, repeat: int = 3) -> float:
    """Measured fp32 matmul throughput of MLX's default device, in GFLOP/s (best of ``repeat``)."""
    import mlx.core as mx

    a = mx.random.normal((n, n))
    mx.eval(a @ a)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        mx.eval(a @ a)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def warn_if_slow() -> None:
    """Warn when the Linux CPU back end still runs matmuls at reference-BLAS speed."""
    import mlx.core as mx

    off = os.environ.get(ENV_VAR, "").strip().lower() in ("off", "0", "none")
    if off or not sys.platform.startswith("linux") or mx.default_device() != mx.cpu:
        return
    gflops = matmul_gflops(384, repeat=2)
    if gflops < SLOW_GFLOPS:
        warnings.warn(
            f"MLX CPU matmul runs at {gflops:.1f} GFLOP/s (reference BLAS?). Install rvc-mlx[cpu] "
            f"(cmeel-openblas needs libgfortran5, or faiss-cpu) or set {ENV_VAR}=/path/to/libopenblas.so.0; "
            f"{ENV_VAR}=off hides this check.",
            RuntimeWarning,
            stacklevel=3,
        )
