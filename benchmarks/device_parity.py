"""Back-end parity: the networks and the whole pipeline on a GPU back end against this CPU's results.

The CPU results are the reference's (every network and the pipeline are tested equal to the PyTorch
reference on CPU), so a GPU run that matches them matches the reference. Models are built from a seed with
numpy (identical on every machine), so no weight files travel; only inputs and CPU outputs do.

    python benchmarks/device_parity.py make DIR     # here, on the CPU: inputs and CPU outputs -> DIR
    python benchmarks/device_parity.py check DIR    # on the GPU machine: same models, compare, time

Stages: RMVPE salience (3 s), HuBERT-base layer 12 (3 s), the v2 48 kHz synthesizer (2 s of frames, noise
zeroed), and the whole pipeline (v2 48 kHz voice, HuBERT, RMVPE, 4 s). Error: max|gpu - cpu| / max|cpu|.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import rvc_mlx  # noqa: F401  (BLAS before MLX on Linux CPU)

import mlx.core as mx  # isort: skip
from mlx.utils import tree_flatten, tree_unflatten  # isort: skip

V2_48K = [1025, 32, 192, 192, 768, 2, 6, 3, 0, "1", [3, 7, 11], [[1, 3, 5]] * 3, [12, 10, 2, 2], 512,
          [24, 20, 4, 4], 109, 256, 48000]


def seed_parameters(model, seed: int) -> None:
    """Fill every parameter from numpy's generator: weights ~ N(0, 1/fan_in), 1-D terms near 1 or 0."""
    rng = np.random.default_rng(seed)
    params = []
    for name, p in sorted(tree_flatten(model.parameters())):
        shape = tuple(p.shape)
        if len(shape) >= 2:
            value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
        elif name.endswith(("weight", "gamma", "scale")):
            value = 1 + 0.1 * rng.standard_normal(shape)
        else:
            value = 0.1 * rng.standard_normal(shape)
        params.append((name, mx.array(value.astype(np.float32))))
    model.update(tree_unflatten(params))
    mx.eval(model.parameters())


def models():
    from rvc_mlx.models.hubert import HubertConfig, HubertModel
    from rvc_mlx.models.rmvpe import RMVPE, RMVPEConfig
    from rvc_mlx.models.synthesizer import Synthesizer, VoiceConfig

    voice = Synthesizer(VoiceConfig.from_rvc(V2_48K, version="v2", f0=True))
    hubert = HubertModel(HubertConfig(final_proj_size=256))
    rmvpe = RMVPE(RMVPEConfig())
    for i, m in enumerate((voice, hubert, rmvpe)):
        seed_parameters(m, 10 + i)
    return voice, hubert, rmvpe


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    phase = 2 * np.pi * np.cumsum(170 + 50 * np.sin(2 * np.pi * 0.7 * t)) / 16000
    gate = (np.sin(2 * np.pi * 0.9 * t) > -0.4)
    noise = np.random.default_rng(3).standard_normal(t.size)
    return (0.3 * sum(np.sin(k * phase) / k for k in range(1, 7)) * gate + 0.01 * noise).astype(np.float32)


def run(workdir: str) -> dict[str, tuple[np.ndarray, float, float]]:
    """Every stage's output, warm and first-call times (seconds) on the default device."""
    from rvc_mlx.models import rmvpe as rmvpe_mod
    from rvc_mlx.pipeline import ConversionOptions, VoiceConverter

    voice, hubert, rmvpe = models()
    out = {}
    audio3 = tone(3.0)

    def timed(name, fn):
        t0 = time.perf_counter()
        np.asarray(fn())  # first call: includes kernel compilation on GPU back ends
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        value = np.asarray(fn(), dtype=np.float32)
        out[name] = (value, time.perf_counter() - t0, first)

    timed("rmvpe", lambda: rmvpe_mod.salience_from_audio(rmvpe, audio3))
    timed("hubert", lambda: hubert.content_features(mx.array(audio3)[None], "v2"))
    frames = 200
    rng = np.random.default_rng(5)
    content = mx.array(rng.standard_normal((1, frames, 768)).astype(np.float32))
    f0 = 150 + 60 * np.sin(np.arange(frames) / 9)
    f0[40:55] = 0
    coarse = mx.array(np.clip(np.round(f0 / 3), 1, 255).astype(np.int32)[None])
    f0_mx = mx.array(f0.astype(np.float32)[None])
    timed("synthesizer", lambda: voice.infer(content, None, coarse, f0_mx, 0, deterministic=True))
    converter = VoiceConverter(voice, hubert, rmvpe=rmvpe)
    options = ConversionOptions(deterministic=True, pitch_shift=2)
    timed("pipeline", lambda: converter.convert_16k(tone(4.0), options)[0])
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["make", "check"])
    parser.add_argument("dir")
    args = parser.parse_args(argv)
    os.makedirs(args.dir, exist_ok=True)
    tf32 = os.environ.get("MLX_ENABLE_TF32")
    print(f"MLX {mx.__version__} on {mx.default_device()}; MLX_ENABLE_TF32={tf32}")
    results = run(args.dir)
    path = os.path.join(args.dir, "cpu_outputs.npz")
    if args.mode == "make":
        np.savez_compressed(path, **{k: v for k, (v, _, _) in results.items()})
        for k, (v, t, first) in results.items():
            print(f"{k}: shape {v.shape}, warm {t * 1000:.1f} ms, first call {first * 1000:.1f} ms (CPU)")
        return 0
    expected = np.load(path)
    worst = 0.0
    for k, (v, t, first) in results.items():
        ref = expected[k]
        if v.shape != ref.shape:
            print(f"{k}: shape {v.shape} != CPU {ref.shape}")
            worst = np.inf
            continue
        err = float(np.max(np.abs(v - ref)) / max(np.max(np.abs(ref)), 1e-30))
        worst = max(worst, err)
        print(f"{k}: max|gpu-cpu|/max|cpu| = {err:.2e}; warm {t * 1000:.1f} ms, first {first * 1000:.1f} ms")
    print(f"worst: {worst:.2e}")
    return 0 if worst <= 2e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
