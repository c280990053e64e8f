"""``rvc-mlx doctor``: check an install in one command.

Reports the MLX back end and device, the BLAS in use and its matmul throughput, then runs the whole
conversion pipeline (RMVPE pitch, HuBERT, synthesizer, RMS mix) on randomly initialised models of the real
sizes (a v2 40 kHz voice, HuBERT-base, RMVPE) and generated audio, and reports its speed. Random weights
give noise-like output; what is checked is that every stage runs, the output is finite and of the right
length, and how fast it is. No model files are needed.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from rvc_mlx import __version__, _blas

# RVC's positional config of a v2 40 kHz voice (as the WebUI's v2 40k pretrained models have it).
V2_40K_CONFIG = [1025, 32, 192, 192, 768, 2, 6, 3, 0, "1", [3, 7, 11], [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
                 [10, 10, 2, 2], 512, [16, 16, 4, 4], 109, 256, 40000]


def test_tone(seconds: float, sample_rate: int = 16000) -> np.ndarray:
    """A voice-like test signal: a gliding harmonic tone with pauses, float32 at 16 kHz."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = 150 + 50 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    tone = sum(np.sin(k * phase) / k for k in range(1, 8))
    gate = (np.sin(2 * np.pi * 0.8 * t) > -0.5).astype(np.float64)
    noise = np.random.default_rng(0).standard_normal(t.shape)
    return (0.25 * tone * gate + 0.005 * noise).astype(np.float32)


def random_converter(workdir: str):
    """A VoiceConverter over random models of the real sizes (RMVPE goes through a native file)."""
    from rvc_mlx.checkpoints.native import save_native
    from rvc_mlx.models.hubert import HubertConfig, HubertModel
    from rvc_mlx.models.rmvpe import RMVPE, RMVPEConfig
    from rvc_mlx.models.synthesizer import Synthesizer, VoiceConfig
    from rvc_mlx.pipeline import VoiceConverter

    mx.random.seed(0)
    voice = Synthesizer(VoiceConfig.from_rvc(V2_40K_CONFIG, version="v2", f0=True))
    hubert = HubertModel(HubertConfig(final_proj_size=256))
    rmvpe_config = RMVPEConfig()
    rmvpe = RMVPE(rmvpe_config)
    rmvpe_path = os.path.join(workdir, "rmvpe-random.safetensors")
    weights = dict(tree_flatten(rmvpe.parameters()))
    save_native(rmvpe_path, weights, "rmvpe", {"config": rmvpe_config.to_dict()})
    mx.eval(voice.parameters(), hubert.parameters())
    return VoiceConverter(voice, hubert, rmvpe=rmvpe_path)


def run_doctor(seconds: float = 3.0) -> int:
    from rvc_mlx.pipeline import ConversionOptions

    print(f"rvc-mlx {__version__} on Python {platform.python_version()} ({platform.system()} "
          f"{platform.machine()})")
    print(f"MLX {mx.__version__}: default device {mx.default_device()}")
    if sys.platform.startswith("linux"):
        print(f"BLAS loaded for MLX: {_blas.loaded_from or 'none (MLX bundled BLAS)'}")
    gflops = _blas.matmul_gflops(512)
    print(f"fp32 matmul 512x512: {gflops:.1f} GFLOP/s")
    _blas.warn_if_slow()
    ok = True
    with tempfile.TemporaryDirectory(prefix="rvc-mlx-doctor-") as workdir:
        t0 = time.perf_counter()
        converter = random_converter(workdir)
        print(f"random v2 40 kHz voice, HuBERT-base and RMVPE built in {time.perf_counter() - t0:.2f} s")
        audio = test_tone(seconds)
        options = ConversionOptions(deterministic=True)
        for attempt in ("first", "warm"):
            t0 = time.perf_counter()
            out, rate = converter.convert_16k(audio, options)
            elapsed = time.perf_counter() - t0
            print(f"{attempt} conversion of {seconds:.1f} s: {elapsed:.2f} s "
                  f"({seconds / elapsed:.1f}x real time), {out.shape[0]} samples at {rate} Hz")
        expected = int(round(seconds * rate))
        if not np.isfinite(out).all():
            print("FAIL: the output has non-finite samples")
            ok = False
        if abs(out.shape[0] - expected) > rate // 50:
            print(f"FAIL: expected about {expected} samples")
            ok = False
    print("all good" if ok else "problems found")
    return 0 if ok else 1
