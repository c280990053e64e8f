"""HuBERT on the CPU: rvc-mlx's CPU path, its plain-MLX path and transformers (torch), side by side.

    python benchmarks/profile_hubert.py --models-dir DIR [--seconds 5 30] [--rounds 3] [--repeats 2]

``DIR`` holds the benchmark's ``hubert_base.pt`` and ``manifest.json`` (``python -m rvc_mlx.bench
--models-dir DIR``). Each side runs in a process of its own (torch never shares one with MLX's OpenBLAS),
the sides alternate for ``rounds`` rounds, and a side's time in a round is the fastest of ``repeats`` warm
calls (v2 features: layer 12) on the benchmark's input (``seconds`` of a test tone + 2 s of padding). The
table gives each side's best round; rvc-mlx's CPU path also reports its stages (each evaluated before the
clock moves on, so they add up to a little more than the plain total).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import side_by_side  # benchmarks/ (this script's folder)
from side_by_side import best_time

HERE = Path(__file__).resolve().parent
SIDES = ("cpu", "mlx", "torch")  # rvc-mlx CPU path, rvc-mlx plain MLX path, transformers on torch


def _side_torch(audio: np.ndarray, models_dir: Path, repeats: int, save: str) -> dict:
    sys.path.insert(0, str(HERE))
    import reference_worker
    import torch

    torch.set_num_threads(reference_worker.cores())
    manifest = json.loads((models_dir / "manifest.json").read_text())
    adapter = reference_worker.load_hubert(models_dir / manifest["hubert"], manifest, "cpu")
    source = torch.from_numpy(audio)
    result = {"total": best_time(lambda: adapter.extract_features(source, None, 12), repeats)}
    np.save(save, adapter.extract_features(source, None, 12)[0].numpy())
    return result


def _side_ours(audio: np.ndarray, models_dir: Path, repeats: int, impl: str, save: str) -> dict:
    import rvc_mlx  # noqa: F401  (the BLAS before mlx.core)
    import mlx.core as mx  # isort: skip
    from rvc_mlx.checkpoints.hubert import load_hubert  # isort: skip
    from rvc_mlx.models import conv, hubert  # isort: skip

    manifest = json.loads((models_dir / "manifest.json").read_text())
    net = load_hubert(models_dir / manifest["hubert"])
    x = mx.array(audio)
    with conv.conv_impl("gemm" if impl == "cpu" else "mlx"):
        result = {"total": best_time(lambda: mx.eval(net.extract_features(x, 12)), repeats)}
        np.save(save, np.array(net.extract_features(x, 12)))
        if impl == "cpu":
            stages = {"front end": 0.0, "positional conv": 0.0, "layers": 0.0}

            def staged():
                t0 = time.perf_counter()
                streams = conv.cpu_streams()
                bounds = hubert._lane_bounds(net.config.num_frames(x.shape[1]), streams)
                xs = hubert._frontend_cpu(net, x, bounds, streams)
                mx.eval(xs)
                t1 = time.perf_counter()
                xs = hubert._pos_conv_cpu(net, xs, bounds, streams)
                mx.eval(xs)
                t2 = time.perf_counter()
                for layer in net.layers:
                    xs = hubert._layer_cpu(layer, xs, streams)
                mx.eval(xs)
                t3 = time.perf_counter()
                for name, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                    stages[name] = min(stages[name] or dt, dt)

            best_time(staged, repeats)
            result.update(stages)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models-dir", required=True)
    side_by_side.add_arguments(p, SIDES)
    a = p.parse_args(argv)
    models_dir = Path(a.models_dir)
    if a.side:
        audio = np.load(a.inputs)
        out = (_side_torch(audio, models_dir, a.repeats, a.save) if a.side == "torch"
               else _side_ours(audio, models_dir, a.repeats, a.side, a.save))
        print(json.dumps(out))
        return 0
    from rvc_mlx.doctor import test_tone

    lines = ["| audio | side | best total s | ÷ torch | max abs diff to torch (rel.) | stages (CPU path) s |",
             "|---:|---|---:|---:|---:|---|"]
    for seconds in a.seconds:
        inputs = Path(f"/tmp/profile_hubert_{seconds:g}s.npy")
        np.save(inputs, test_tone(seconds + 2)[None].astype(np.float32))
        args = ["--models-dir", str(models_dir), "--repeats", str(a.repeats)]
        best = side_by_side.alternate(__file__, args, a.sides, a.rounds, str(inputs), f"{seconds:g} s")
        ref = best.get("torch", {}).get("total")
        for side, r in best.items():
            ratio = f"{r['total'] / ref:.2f}x" if ref else "–"
            diff = "–"
            if ref:
                features, reference = np.load(f"{inputs}.{side}.npy"), np.load(f"{inputs}.torch.npy")
                diff = np.max(np.abs(features - reference))
                diff = f"{diff:.1e} ({diff / np.max(np.abs(reference)):.1e} rel.)"
            stages = ", ".join(f"{k} {v:.3f}" for k, v in r.items() if k != "total")
            lines.append(f"| {seconds:g} s | {side} | {r['total']:.3f} | {ratio} | {diff} | {stages} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
