"""Shared by the per-model profilers (`profile_hubert.py`, `profile_rmvpe.py`): each side (rvc-mlx on a path,
or the PyTorch reference) runs in a process of its own, the sides alternate for a number of rounds, and each
side keeps its best round. A side process is the same script started with ``--side NAME --inputs FILE
--save FILE``; it prints its result (a dict with a ``total`` time, s) as the last line of JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable


def best_time(call: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` calls after one warm-up call, in seconds."""
    call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return min(times)


def add_arguments(p: argparse.ArgumentParser, sides: tuple[str, ...]) -> None:
    """Rounds, repeats, which sides, and the hidden options of a side process."""
    p.add_argument("--seconds", type=float, nargs="+", default=[5.0, 30.0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--sides", nargs="+", choices=sides, default=list(sides))
    p.add_argument("--side", choices=sides, help=argparse.SUPPRESS)
    p.add_argument("--inputs", help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)


def alternate(script: str, args: list[str], sides: list[str], rounds: int, inputs: str, label: str) -> dict:
    """Run every side ``rounds`` times, alternating, each in a fresh process of ``script`` with ``args``;
    side NAME saves its output to ``{inputs}.NAME.npy``. Returns {side: its result with the lowest total}."""
    best: dict[str, dict] = {}
    for _ in range(rounds):
        for side in sides:
            cmd = [sys.executable, script, "--side", side, *args, "--inputs", inputs,
                   "--save", f"{inputs}.{side}.npy"]
            run = subprocess.run(cmd, check=True, capture_output=True, text=True)
            result = json.loads(run.stdout.strip().splitlines()[-1])
            print(label, side, {k: round(v, 4) for k, v in result.items()}, flush=True)
            if side not in best or result["total"] < best[side]["total"]:
                best[side] = result
    return best
