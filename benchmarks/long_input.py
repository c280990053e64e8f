"""Long inputs: time and memory of rvc-mlx against the length of the recording, one loaded converter.

Converts synthetic voice-like recordings (``rvc_mlx.warmup.synthetic_voice``) of increasing length with full-
size random models (a v2 48 kHz voice, HuBERT-base, RMVPE, an IVF512 index of 20 000 vectors; made once in
``--models-dir`` as ``python -m rvc_mlx.bench`` makes them), RMVPE f0, noise zeroed, without and with the
index. For each run: wall time, real-time factor, per stage (the bench's f0, HuBERT, retrieval,
synthesizer, plus the signal steps around them: high-pass, split points, RMS mix, output resampling) the
time, the MLX allocator's peak (``mx.get_peak_memory``) and the host's peak RSS (VmHWM, reset per stage),
and the process's peak RSS over the run. Results go to ``--out`` after every run (``long-input.json``,
``.md`` and, with matplotlib, ``.png``), so a run that dies part way keeps what it finished.

    python benchmarks/long_input.py --models-dir /tmp/benchmodels --lengths 30s 1m 2m --out /tmp/long
    python benchmarks/long_input.py --device gpu --lengths 30s 1m 2m 5m 10m 30m --out results/long-gpu
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path

from rvc_mlx import bench  # the package's __init__ loads the BLAS before anything imports mlx.core

import mlx.core as mx  # isort: skip
from rvc_mlx import signal_steps  # noqa: E402
from rvc_mlx.pipeline import ConversionOptions  # noqa: E402
from rvc_mlx.warmup import synthetic_voice, warm_up  # noqa: E402

# The signal steps timed apart (they run on numpy: their memory shows in the RSS, not in MLX's peak).
STEP_TARGETS = (("high_pass", "high-pass"), ("split_points", "split"), ("mix_rms", "RMS mix"))
RESAMPLE_STAGE = "resample"


def parse_length(text: str) -> float:
    """'90', '90s', '1.5m', '2h' -> seconds."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    text = text.strip().lower()
    scale = units.get(text[-1:], None)
    try:
        return float(text[:-1]) * scale if scale else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a length: {text!r} (e.g. 30s, 2m, 90)") from None


def _label(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def _rss_now_mb() -> float:
    """Current resident set of this process, MiB (Linux; elsewhere the peak so far)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) / 1024
    return bench._rss_mb()


def run(args) -> int:
    mx.set_default_device(mx.gpu if args.device == "gpu" else mx.cpu)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models_dir = Path(args.models_dir)
    options = bench.BenchOptions(profile="full", device=args.device)
    manifest = bench._models(options, models_dir, with_reference=False)
    job = {"precision": args.precision, "index_mode": "ivf"}
    t0 = time.perf_counter()
    converter = bench._load_converter(job, models_dir, manifest)
    load_seconds = time.perf_counter() - t0
    print(f"models loaded in {load_seconds:.1f} s ({manifest['description']})", flush=True)
    extra = tuple((signal_steps, name, stage) for name, stage in STEP_TARGETS)
    import rvc_mlx.audio  # the pipeline imports its resample at call time: patched here, timed as a stage

    timer = bench.StageTimer(converter, extra=(*extra, (rvc_mlx.audio, "resample", RESAMPLE_STAGE)))
    index_rates = {"none": [0.0], "with": [0.75], "both": [0.0, 0.75]}[args.index]
    settings = dict(f0_method=manifest["f0_method"], protect=0.33, rms_mix_rate=0.25, deterministic=True,
                    output_sample_rate=args.output_sample_rate)
    warm = warm_up(converter, seconds=(3.0,), index_rate=max(index_rates), **settings)
    print(f"warm-up (3 s) took {warm.elapsed_seconds:.1f} s", flush=True)
    machine = f"{platform.system().lower()}-{platform.machine()}-{bench._cores()}core"
    info = {"machine": args.machine or machine,
            "device": args.device, "precision": getattr(converter, "precision", "float32"),
            "host": bench._machine_info(), "models": manifest["description"], "load_seconds": load_seconds,
            "date": time.strftime("%Y-%m-%d %H:%M"), "versions": {"mlx": mx.__version__},
            "output_sample_rate": args.output_sample_rate, "stages": list(timer.stages)}
    runs = []
    try:
        for seconds in args.lengths:
            audio = synthetic_voice(seconds)
            for rate in index_rates:
                gc.collect()
                mx.clear_cache()  # each run starts without the previous run's cached buffers
                rss_before = _rss_now_mb()
                probe = bench.MemoryProbe()
                probe.start()
                print(f"{_label(seconds)}, index rate {rate}: converting ...", flush=True)
                timer.begin()
                t0 = time.perf_counter()
                opts = ConversionOptions(index_rate=rate, **settings)
                result, out_rate = converter.convert_16k(audio, opts)
                total = time.perf_counter() - t0
                memory = timer.end()
                run_mlx, run_rss = probe.stop()
                stages = dict(timer.seconds)
                entry = {"seconds": seconds, "index_rate": rate, "total": total, "rtf": total / seconds,
                         "stages": {**stages, "rest": total - sum(stages.values())}, "memory": memory,
                         "rss_before_mb": rss_before, "peak_rss_mb": max(run_rss, memory["rss"]["total"]),
                         "mlx_peak_mb": memory["mlx"]["total"], "mlx_cache_mb": mx.get_cache_memory() / 2**20,
                         "output_samples": int(result.shape[0]), "output_rate": out_rate}
                del result
                runs.append(entry)
                print(f"  {total:.1f} s (RTF {entry['rtf']:.2f}); peak RSS {entry['peak_rss_mb']:.0f} MiB "
                      f"(+{entry['peak_rss_mb'] - rss_before:.0f}), MLX peak {entry['mlx_peak_mb']:.0f} MiB; "
                      + ", ".join(f"{k} {v:.1f} s" for k, v in entry["stages"].items()), flush=True)
                write(out, info, runs)
            del audio
    finally:
        timer.close()
    print(f"written: {out / 'long-input.md'}", flush=True)
    return 0


def _markdown(info: dict, runs: list[dict]) -> str:
    stages = info["stages"]
    rate = f"{info['output_sample_rate']} Hz" if info["output_sample_rate"] else "the model's rate"
    lines = [f"# rvc-mlx on long inputs: {info['machine']}, MLX device {info['device']}", "",
             f"- host: {info['host']['cpu']}, {info['host']['cores']} cores, {info['host']['os']}",
             f"- models: {info['models']}; precision {info['precision']}; loaded in "
             f"{info['load_seconds']:.1f} s; mlx {info['versions']['mlx']}",
             "- input: `rvc_mlx.warmup.synthetic_voice` at 16 kHz; RMVPE f0, protect 0.33, RMS mix 0.25, "
             f"noise zeroed, output at {rate}; one converter, "
             "warmed up on 3 s first; MLX's buffer cache cleared before each run",
             f"- run {info['date']}", "", "## Time and memory per run", "",
             "| audio | index rate | time s | RTF | peak RSS MiB | RSS growth MiB | MLX peak MiB | "
             "MLX cache after MiB | RSS growth per audio minute MiB |", "|---:" * 9 + "|"]
    for r in runs:
        growth = r["peak_rss_mb"] - r["rss_before_mb"]
        lines.append(f"| {_label(r['seconds'])} | {r['index_rate']:g} | {r['total']:.1f} | {r['rtf']:.3f} | "
                     f"{r['peak_rss_mb']:.0f} | {growth:.0f} | {r['mlx_peak_mb']:.0f} | "
                     f"{r['mlx_cache_mb']:.0f} | {growth / (r['seconds'] / 60):.0f} |")
    for title, key in (("Time per stage (s)", None), ("Peak host RSS per stage (MiB)", "rss"),
                       ("MLX peak per stage (MiB)", "mlx")):
        lines += ["", f"## {title}", "", "| audio | index rate | " + " | ".join(stages) + " |",
                  "|---:|---:|" + "---:|" * len(stages)]
        for r in runs:
            values = r["stages"] if key is None else r["memory"][key]
            fmt = "{:.2f}" if key is None else "{:.0f}"
            cells = " | ".join(fmt.format(values.get(s, 0.0)) for s in stages)
            lines.append(f"| {_label(r['seconds'])} | {r['index_rate']:g} | {cells} |")
    return "\n".join(lines) + "\n"


def _chart(path: Path, info: dict, runs: list[dict]) -> bool:
    from rvc_mlx.bench_report import pyplot

    plt = pyplot()
    if plt is None:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    for rate in sorted({r["index_rate"] for r in runs}):
        rs = [r for r in runs if r["index_rate"] == rate]
        minutes = [r["seconds"] / 60 for r in rs]
        tag = f"index rate {rate:g}"
        ax1.plot(minutes, [r["total"] for r in rs], "o-", label=tag)
        ax2.plot(minutes, [r["peak_rss_mb"] for r in rs], "o-", label=f"peak RSS, {tag}")
        ax2.plot(minutes, [r["mlx_peak_mb"] for r in rs], "s--", label=f"MLX peak, {tag}")
    ax1.set_ylabel("conversion time (s)")
    ax2.set_ylabel("MiB")
    for ax, title in ((ax1, "time vs length"), (ax2, "peak memory vs length")):
        ax.set_xlabel("audio length (min)")
        ax.set_title(title)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"rvc-mlx long inputs: {info['machine']} (MLX {info['device']}, {info['precision']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(out: Path, info: dict, runs: list[dict]) -> None:
    (out / "long-input.json").write_text(json.dumps({**info, "runs": runs}, indent=1))
    (out / "long-input.md").write_text(_markdown(info, runs))
    _chart(out / "long-input.png", info, runs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=parse_length, nargs="+",
                   default=[30.0, 60.0, 120.0, 300.0, 600.0, 1800.0], help="e.g. 30s 1m 2m 5m 10m 30m")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--precision", choices=bench.PRECISIONS, default="float32")
    p.add_argument("--index", choices=["none", "with", "both"], default="both",
                   help="convert without the index (rate 0), with it (0.75), or both")
    p.add_argument("--output-sample-rate", type=int, help="resample the output (Hz); default the model's")
    p.add_argument("--models-dir", default="/tmp/rvc-mlx-benchmodels", help="model files (made once)")
    p.add_argument("--machine", help="machine name in the report")
    p.add_argument("--out", required=True, help="results folder")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
