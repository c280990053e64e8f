"""The report of ``rvc-mlx bench``: the stage names it lays out, the markdown tables (end to end, per
stage, rvc-mlx's memory per stage, first call after a warm-up), the PNG chart (matplotlib, when installed)
and ``write_report``, which merges a run into ``results-<device>.json`` and rewrites the table and chart
from everything in it. Reads the result dicts ``rvc_mlx.bench`` builds; runs nothing itself.
"""

from __future__ import annotations

import json
from pathlib import Path

STAGES = ("f0", "hubert", "retrieval", "synth", "rest")  # per-conversion stages; loading is timed apart
STAGE_NAMES = {"f0": "f0", "hubert": "HuBERT", "retrieval": "retrieval", "synth": "synthesizer",
               "rest": "rest"}


def _f(x, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _by_impl(entry: dict) -> dict:
    return {r["impl"]: r for r in entry["results"]}


def _markdown(info: dict, runs: list[dict]) -> str:
    o, host = info["options"], info["host"]
    lines = [f"# rvc-mlx vs the PyTorch reference: {info['machine']}, MLX device {info['device']}", "",
             f"- host: {host['cpu']}, {host['cores']} cores, {host['os']}, Python {host['python']}",
             f"- models (random weights): {info['models']}",
             f"- conversion: index rate {o['index_rate']}, protect {o['protect']}, RMS mix "
             f"{o['rms_mix_rate']}, noise zeroed on both sides; rvc-mlx searches the index in "
             f"'{o['index_mode']}' mode",
             "- cold: the first conversion in a fresh process, after loading; warm: the best of the n "
             "conversions that follow (n in the table); RTF: warm time / audio length (below 1 is faster "
             "than real time); load average: 1-minute, when each side started and finished"]
    impls = {r["impl"]: r for e in runs for r in e["results"]}
    for name, r in impls.items():
        versions = ", ".join(f"{k} {v}" for k, v in r["versions"].items())
        kind = "BLAS threads" if name == "rvc-mlx" else "threads"
        threads = f"{r['threads']} {kind}" if r["threads"] else f"default {kind}"
        precision = f", precision {r['precision']}" if r.get("precision") else ""
        lines.append(f"- {name}: {versions}; device {r['device']}, {threads}{precision}")
    if "torch" in impls:
        lines.append("- reference: rvc 0.3.5 `Pipeline.pipeline` in fp32, in its own process (HuBERT through "
                     "transformers' HubertModel on the fairseq weights)")
    if info.get("reference_note"):
        lines.append(f"- note: {info['reference_note']}")
    lines += ["", "## End to end", "",
              "| audio | impl | load cold / warm s | cold s | warm s | warm RTF | speed-up vs torch (warm) "
              "| peak RSS MiB | GPU peak MiB | load avg before → after | run |",
              "|---:|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for e in runs:
        impl = _by_impl(e)
        torch_warm = impl["torch"]["warm"]["total"] if "torch" in impl else None
        for name, r in impl.items():
            speed = torch_warm / r["warm"]["total"] if torch_warm else None
            cells = [f"{e['seconds']:g} s", name, f"{_f(r['load']['cold'])} / {_f(r['load']['warm'])}",
                     _f(r["cold"]["total"]), f"{_f(r['warm']['total'])} (n={len(r['warm_totals'])})",
                     _f(r["warm"]["total"] / e["seconds"], 3),
                     _f(speed) + "x" if speed else "–", f"{r['peak_rss_mb']:.0f}", _f(r["gpu_peak_mb"], 0),
                     f"{r['loadavg'][0]:.1f} → {r['loadavg'][1]:.1f}", e["date"]]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Per stage", "",
              "| audio | impl | call | " + " | ".join(STAGE_NAMES[s] for s in STAGES) + " | total |",
              "|---:|---|---|" + "---:|" * (len(STAGES) + 1)]
    for e in runs:
        impl = _by_impl(e)
        for name, r in impl.items():
            for call in ("cold", "warm"):
                cells = " | ".join(_f(r[call][s]) for s in (*STAGES, "total"))
                lines.append(f"| {e['seconds']:g} s | {name} | {call} | {cells} |")
        if len(impl) == 2:
            ours, ref = impl["rvc-mlx"]["warm"], impl["torch"]["warm"]
            ratios = " | ".join(_f(ours[s] / ref[s]) + "x" if ref[s] > 1e-3 else "–"
                                for s in (*STAGES, "total"))
            lines.append(f"| {e['seconds']:g} s | rvc-mlx ÷ torch | warm | {ratios} |")
    lines += _memory_markdown(runs) + _first_call_markdown(runs)
    agreement = [f"{e['seconds']:g} s: {e['output_rel_err']:.1e}" for e in runs if e.get("output_rel_err")]
    if agreement:
        lines += ["", "Same models, same input, same output: max|rvc-mlx − torch| / max|torch| = "
                  + ", ".join(agreement) + " (the reference's output is 16-bit)."]
    return "\n".join(lines) + "\n"


def _memory_markdown(runs: list[dict]) -> list[str]:
    """Per-stage peak memory of rvc-mlx: MLX's allocator and the host RSS, MiB."""
    rows = [(e, r) for e in runs for r in e["results"] if r["impl"] == "rvc-mlx" and r.get("memory")]
    if not rows:
        return []
    lines = ["", "## rvc-mlx memory per stage (peak MiB)", "",
             "MLX: `mx.get_peak_memory()` after `mx.reset_peak_memory()` at each stage's start (the weights "
             "and every live array count); RSS: the process's peak resident set over the stage (Linux: "
             "VmHWM reset through /proc/self/clear_refs). Load: the models loaded and evaluated.", "",
             "| audio | call | memory | load | " + " | ".join(STAGE_NAMES[s] for s in STAGES)
             + " | call peak | MLX active after load | MLX cache at end |",
             "|---:|---|---|---:|" + "---:|" * (len(STAGES) + 3)]
    for e, r in rows:
        m = r["memory"]
        for call in ("cold", "warm"):
            for kind in ("mlx", "rss") if m.get(call) else ():
                cells = [f"{e['seconds']:g} s", call, "MLX" if kind == "mlx" else "RSS",
                         f"{m['load'][kind]:.0f}", *(f"{m[call][kind][s]:.0f}" for s in STAGES),
                         f"{m[call][kind]['total']:.0f}", f"{m['mlx_active_after_load_mb']:.0f}",
                         f"{m['mlx_cache_mb']:.0f}"]
                lines.append("| " + " | ".join(cells) + " |")
    return lines


def _first_call_markdown(runs: list[dict]) -> list[str]:
    """Cold (no warm-up), warm-up, first call after it, warm; each in seconds."""
    rows = [(e, r) for e in runs for r in e["results"] if r.get("warmup")]
    if not rows:
        return []
    lines = ["", "## First call (rvc-mlx)", "",
             "Cold: the first conversion of a process that did not warm up; warm-up: "
             "`rvc_mlx.warmup.warm_up` (synthetic audio of the lengths shown) in a second process, then "
             "that process's first call. "
             "Target: first call after warm-up at most 2x warm.", "",
             "| audio | precision | cold s | warm-up s (lengths) | first call after warm-up s | warm s "
             "| first after warm-up ÷ warm |", "|---:|---|---:|---|---:|---:|---:|"]
    for e, r in rows:
        w = r["warmup"]
        lengths = ", ".join(f"{length:g} s" for length, _ in w["runs"])
        first, warm = w["first_call"]["total"], r["warm"]["total"]
        lines.append(f"| {e['seconds']:g} s | {r.get('precision', 'float32')} | {_f(r['cold']['total'])} | "
                     f"{_f(w['seconds'])} ({lengths}) | {_f(first)} | {_f(warm)} | {_f(first / warm)}x |")
    return lines


def pyplot():
    """matplotlib's pyplot on the file-only Agg back end, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _chart(path: Path, info: dict, runs: list[dict]) -> bool:
    """Stacked warm stage times per length and implementation, beside cold and warm totals (matplotlib)."""
    plt = pyplot()
    if plt is None:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    labels, bottoms, x = [], [], 0
    colors = dict(zip(STAGES, ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8c8c8c"), strict=True))
    for e in runs:
        for name, r in _by_impl(e).items():
            bottom = 0.0
            for s in STAGES:
                ax1.bar(x, r["warm"][s], bottom=bottom, color=colors[s],
                        label=STAGE_NAMES[s] if x == 0 else None)
                bottom += max(r["warm"][s], 0.0)
            ax2.bar(x - 0.2, r["cold"]["total"], 0.4, color="#8172b3", label="cold" if x == 0 else None)
            ax2.bar(x + 0.2, r["warm"]["total"], 0.4, color="#64b5cd", label="warm" if x == 0 else None)
            labels.append(f"{e['seconds']:g} s\n{name}")
            bottoms.append(bottom)
            x += 1
    for ax, title in ((ax1, "warm, per stage"), (ax2, "end to end")):
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_ylabel("seconds")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle(f"rvc-mlx vs PyTorch reference: {info['machine']} (MLX {info['device']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(out_dir: Path, info: dict, runs: list[dict]) -> dict[str, Path]:
    """Merge ``runs`` into ``out_dir/results-<device>.json`` (replacing the same lengths) and write the
    markdown table and PNG chart of everything in it -> the written paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"results-{info['device']}"
    json_path = stem.with_suffix(".json")
    kept = []
    if json_path.is_file():
        new = {e["seconds"] for e in runs}
        kept = [e for e in json.loads(json_path.read_text())["runs"] if e["seconds"] not in new]
    merged = sorted(kept + [{**e, "date": info["date"]} for e in runs], key=lambda e: e["seconds"])
    json_path.write_text(json.dumps({**info, "runs": merged}, indent=1))
    paths = {"json": json_path, "md": stem.with_suffix(".md")}
    paths["md"].write_text(_markdown(info, merged))
    if _chart(stem.with_suffix(".png"), info, merged):
        paths["png"] = stem.with_suffix(".png")
    return paths
