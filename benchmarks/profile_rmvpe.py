"""RMVPE salience on the CPU: rvc-mlx against the reference (``rvc.lib.rmvpe.RMVPE``, torch), side by side.

    python benchmarks/profile_rmvpe.py [--model /tmp/benchmodels/rmvpe.pt] [--seconds 5 30] [--rounds 3]

Each side runs in a process of its own (torch never shares one with the OpenBLAS rvc-mlx loads); the sides
alternate for ``rounds`` rounds and a side's time in a round is the fastest of ``repeats`` warm calls on
``seconds`` of the doctor's test tone (audio -> log-mel -> salience; both pad frames with zeros, as rvc 0.3.5
does). The table gives each side's best round, the largest salience difference to the reference, and
rvc-mlx's parts (each evaluated before the clock moves on, so they add up to a little more than the total):
mel, U-Net encoder levels / intermediate stages / decoder levels (upsampling, then residual blocks), head,
GRU, fc.
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
SIDES = ("ours", "torch")


def _side_torch(audio: np.ndarray, model: str, repeats: int, save: str) -> dict:
    import transformers  # noqa: F401  (before the stub: transformers probes torchaudio's module spec)

    sys.path.insert(0, str(HERE.parent / "tests"))
    from conftest import _stub_torchaudio  # the reference's import chain reaches torchaudio (not installed)

    _stub_torchaudio()
    import torch
    from rvc.lib.rmvpe import RMVPE

    sys.path.insert(0, str(HERE))
    import reference_worker

    torch.set_num_threads(reference_worker.cores())
    ref = RMVPE(model, is_half=False, device="cpu")
    x = torch.from_numpy(audio)[None]

    def call():
        with torch.no_grad():
            return ref.mel2hidden(ref.mel_extractor(x, center=True)).squeeze(0).numpy()

    result = {"total": best_time(call, repeats)}
    np.save(save, call())
    return result


def _side_ours(audio: np.ndarray, model: str, repeats: int, save: str) -> dict:
    import rvc_mlx  # noqa: F401  (the BLAS before mlx.core)
    import mlx.core as mx  # isort: skip
    from rvc_mlx.checkpoints.rmvpe import load_rmvpe  # isort: skip
    from rvc_mlx.models import rmvpe  # isort: skip

    net = load_rmvpe(model)
    result = {"total": best_time(lambda: rmvpe.salience_from_audio(net, audio, "constant"), repeats)}
    np.save(save, rmvpe.salience_from_audio(net, audio, "constant"))
    parts: dict[str, float] = {}

    def staged():
        times: dict[str, float] = {}
        clock = [time.perf_counter()]

        def lap(name: str, x: mx.array) -> None:
            mx.eval(x)
            now = time.perf_counter()
            group = name.split()[0] if name.startswith("intermediate") else name
            times[group] = times.get(group, 0.0) + now - clock[0]
            clock[0] = now

        mel = rmvpe.pad_frames(rmvpe.log_mel(mx.array(audio)[None]), "constant")
        lap("mel", mel)
        feats = net.unet(mel, rmvpe._slab_frames(), on_stage=lap)
        hidden = net.gru(feats)
        lap("gru", hidden)
        lap("fc", mx.sigmoid(net.fc(hidden)))
        for name, dt in times.items():
            parts[name] = min(parts.get(name, dt), dt)

    try:
        best_time(staged, repeats)
    except TypeError:  # an rvc-mlx from before ``on_stage``: totals only
        pass
    result.update(parts)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="/tmp/benchmodels/rmvpe.pt")
    side_by_side.add_arguments(p, SIDES)
    a = p.parse_args(argv)
    if a.side:
        audio = np.load(a.inputs)
        side = _side_torch if a.side == "torch" else _side_ours
        print(json.dumps(side(audio, a.model, a.repeats, a.save)))
        return 0
    from rvc_mlx.doctor import test_tone

    lines = ["| audio | side | best total s | ÷ torch | max abs salience diff to torch | parts (ours) s |",
             "|---:|---|---:|---:|---:|---|"]
    for seconds in a.seconds:
        inputs = Path(f"/tmp/profile_rmvpe_{seconds:g}s.npy")
        np.save(inputs, test_tone(seconds))
        best = side_by_side.alternate(__file__, ["--model", a.model, "--repeats", str(a.repeats)], a.sides,
                                      a.rounds, str(inputs), f"{seconds:g} s")
        ref = best.get("torch", {}).get("total")
        for side, r in best.items():
            ratio = f"{r['total'] / ref:.2f}x" if ref else "–"
            diff = "–"
            if ref and side != "torch":
                got, want = np.load(f"{inputs}.{side}.npy"), np.load(f"{inputs}.torch.npy")
                diff = f"{np.max(np.abs(got - want)):.1e}"
            parts = ", ".join(f"{k} {v:.3f}" for k, v in r.items() if k != "total")
            lines.append(f"| {seconds:g} s | {side} | {r['total']:.3f} | {ratio} | {diff} | {parts} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
