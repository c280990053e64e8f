"""Time the synthesizer or HuBERT layer by layer, rvc-mlx against the PyTorch reference, on the same inputs.

    python benchmarks/profile_layers.py --models-dir DIR [--model synth|hubert] [--seconds 5] [--repeats 2]
                                        [--out FILE.md]

``DIR`` holds the benchmark's model files (``python -m rvc_mlx.bench --models-dir DIR`` or
``benchmarks/make_models.py``). Each side runs in a process of its own (``--side ours|torch``, started by
this script; the reference never shares a process with MLX's OpenBLAS) on the same inputs, as long as the
pipeline's padded chunk (1 s each side): for the synthesizer random content features and a gliding f0
curve, for HuBERT a voice-like tone. CPU only.

What a layer's time covers: rvc-mlx evaluates a layer's inputs first (off the clock) and its output before
the clock stops, so element-wise work between the timed layers (activations, residual adds, norms the
reference keeps outside them) lands in an "other" row. The reference is timed with forward pre-/post-hooks;
the pre-hook runs ahead of weight norm's, so a synthesizer conv's time includes the weight re-computation
that RVC's checkpoints (weight norm not removed) pay on every call. Times: the fastest of ``repeats`` calls
after a warm-up call, in seconds. HuBERT's rows time its plain-MLX path (its CPU path runs in time lanes:
`benchmarks/profile_hubert.py` times that one); on the CPU the synthesizer's decoder is one row (its
chunked CPU path has no per-layer calls to wrap).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
# Timed modules (regular expressions over the models' own module names) -> the report's row. Synthesizer
# module names are RVC's state-dict names on both sides.
SYNTH_CPU_LAYERS = r"enc_p|flow|dec|dec\.(m_source|conv_pre|cond)"
SYNTH_LAYERS = (r"enc_p|flow|dec|dec\.(m_source|conv_pre|cond|conv_post|(ups|noise_convs)\.\d+"
                r"|resblocks\.\d+\.convs[12]?\.\d+)")
HUBERT_GROUPS = {  # row: (rvc-mlx module, transformers module)
    "conv feature extractor (7 strided convs)": (r"feature_extractor\.convs\.\d+",
                                                 r"feature_extractor\.conv_layers\.\d+\.conv"),
    "feature projection": (r"feature_proj", r"feature_projection\.projection"),
    "positional conv (grouped, k=128, + GELU)": (r"pos_conv", r"encoder\.pos_conv_embed"),
    "self-attention (q/k/v, softmax, out)": (r"layers\.\d+\.attn", r"encoder\.layers\.\d+\.attention"),
    "FFN fc1 (widening)": (r"layers\.\d+\.fc1", r"encoder\.layers\.\d+\.feed_forward\.intermediate_dense"),
    "FFN fc2 (narrowing)": (r"layers\.\d+\.fc2", r"encoder\.layers\.\d+\.feed_forward\.output_dense"),
}


def _hook(module, name: str, seconds: dict) -> None:
    """Accumulate ``module``'s forward time under ``name`` (pre-hook first, ahead of weight norm's)."""
    start = []

    def pre(mod, args):
        start.append(time.perf_counter())

    def post(mod, args, out):
        seconds[name] += time.perf_counter() - start.pop()

    module.register_forward_pre_hook(pre, prepend=True)
    module.register_forward_hook(post)


def _side_torch(model: str, inputs: dict, models_dir: Path, repeats: int) -> dict:
    import reference_worker
    import torch

    torch.set_num_threads(reference_worker.cores())
    torch.randn_like = torch.zeros_like
    seconds = defaultdict(float)
    if model == "synth":
        net = reference_worker.load_voice(models_dir / "voice.pth", "cpu")
        pattern = SYNTH_LAYERS
        args = [torch.from_numpy(inputs["content"]), torch.tensor([inputs["content"].shape[1]]),
                torch.from_numpy(inputs["pitch"]).long(), torch.from_numpy(inputs["f0"]), torch.tensor([0])]
        call = lambda: net.infer(*args)  # noqa: E731
    else:
        manifest = json.loads((models_dir / "manifest.json").read_text())
        adapter = reference_worker.load_hubert(models_dir / manifest["hubert"], manifest, "cpu")
        net = adapter.model
        pattern = "|".join(torch_re for _, torch_re in HUBERT_GROUPS.values())
        source = torch.from_numpy(inputs["audio"])
        call = lambda: adapter.extract_features(source, None, 12)  # noqa: E731
    for name, module in net.named_modules():
        if re.fullmatch(pattern, name):
            _hook(module, name, seconds)
    return _best(call, seconds, repeats, torch.no_grad)


def _side_ours(model: str, inputs: dict, models_dir: Path, repeats: int) -> dict:
    import rvc_mlx  # noqa: F401  (the BLAS before mlx.core)
    import mlx.core as mx  # isort: skip
    from rvc_mlx.checkpoints.hubert import load_hubert  # isort: skip
    from rvc_mlx.checkpoints.voice import load_voice  # isort: skip

    seconds = defaultdict(float)

    def timed(fn, name):
        def call(*args, **kwargs):
            mx.eval([a for a in args if isinstance(a, mx.array)])
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            mx.eval(out)
            seconds[name] += time.perf_counter() - t0
            return out

        return call

    from rvc_mlx.models.conv import conv_impl, use_cpu_path  # isort: skip

    if model == "synth":
        net = load_voice(models_dir / "voice.pth")
        # the CPU path's chunked decoder calls its layers' `region`/`steps`: time the decoder as a whole there
        pattern = SYNTH_CPU_LAYERS if use_cpu_path() else SYNTH_LAYERS
        content, pitch, f0 = (mx.array(inputs[k]) for k in ("content", "pitch", "f0"))
        call = lambda: mx.eval(net.infer(content, None, pitch, f0, 0, deterministic=True))  # noqa: E731
    else:
        manifest = json.loads((models_dir / "manifest.json").read_text())
        net = load_hubert(models_dir / manifest["hubert"])
        pattern = "|".join(ours_re for ours_re, _ in HUBERT_GROUPS.values())
        audio = mx.array(inputs["audio"])
        def call():  # the plain-MLX path, layer by layer (the CPU path: benchmarks/profile_hubert.py)
            with conv_impl("mlx"):
                mx.eval(net.content_features(audio, "v2"))
    modules = dict(net.named_modules())
    for name in [n for n in modules if re.fullmatch(pattern, n)]:
        method = "reverse" if name == "flow" else "__call__"  # the synthesizer calls flow.reverse
        wrapper = timed(getattr(modules[name], method), name)
        parent, _, attr = name.rpartition(".")
        if method == "reverse":
            object.__setattr__(modules[name], "reverse", wrapper)
        elif attr.isdigit():  # an item of a list of layers
            grand, _, list_name = parent.rpartition(".")
            getattr(modules[grand] if grand else net, list_name)[int(attr)] = wrapper
        else:  # object.__setattr__: an instance attribute, past mlx.nn.Module's own __setattr__
            object.__setattr__(modules[parent] if parent else net, attr, wrapper)
    best = _best(call, seconds, repeats, None)
    if model == "synth":
        c = net.config
        best["layout"] = {"dilations": [list(d) for d in c.resblock_dilation_sizes],
                          "kernels": list(c.resblock_kernel_sizes), "rates": list(c.upsample_rates),
                          "channels": c.upsample_initial_channel}
    return best


def _best(call, seconds: dict, repeats: int, context) -> dict:
    """A warm-up call, then ``repeats`` timed ones -> the per-layer times of the fastest (and its total)."""
    best = None
    for i in range(repeats + 1):
        seconds.clear()
        t0 = time.perf_counter()
        if context is not None:
            with context():
                call()
        else:
            call()
        total = time.perf_counter() - t0
        if i and (best is None or total < best["total"]):
            best = {**seconds, "total": total}
    return best


def _synth_rows(times: dict, layout: dict) -> dict[str, float]:
    rows = defaultdict(float)
    n_kernels = len(layout["kernels"])
    for name, t in times.items():
        parts = name.split(".")
        if parts[:2] == ["dec", "resblocks"]:
            stage, j = divmod(int(parts[2]), n_kernels)
            dilation = layout["dilations"][j][int(parts[4])] if parts[3] == "convs1" else 1
            c = layout["channels"] // 2 ** (stage + 1)
            kind = "dilated convs (d=3, 5)" if dilation > 1 else "undilated convs"
            rows[f"stage {stage} ({c} ch, x{np.prod(layout['rates'][:stage + 1])}) resblock {kind}"] += t
        elif parts[:2] in (["dec", "ups"], ["dec", "noise_convs"]):
            what = "upsample (conv transpose)" if parts[1] == "ups" else "noise_conv (strided conv)"
            rows[f"stage {parts[2]} {what}"] += t
        elif name in ("enc_p", "flow") or name.startswith("dec."):
            rows[{"enc_p": "text encoder", "flow": "flow"}.get(name, name)] += t
    dec_parts = sum(t for n, t in times.items() if n.startswith("dec."))
    rows["decoder other (activations, adds, tanh)"] = times["dec"] - dec_parts
    rows["synthesizer other (embedding, prior, masks)"] = (
        times["total"] - times["dec"] - times["enc_p"] - times["flow"])
    return rows


def _hubert_rows(times: dict, side: int) -> dict[str, float]:
    rows = defaultdict(float)
    for row, patterns in HUBERT_GROUPS.items():
        rows[row] = sum(t for n, t in times.items() if re.fullmatch(patterns[side], n))
    rows["other (norms, GELU, residual adds)"] = times["total"] - sum(rows.values())
    return rows


def report(model: str, ours: dict, ref: dict, seconds: float) -> str:
    """Markdown: layer groups with the two sides' times, their ratio and each group's share of ours."""
    if model == "synth":
        layout = ours.pop("layout")
        a, b = _synth_rows(ours, layout), _synth_rows(ref, layout)
    else:
        a, b = _hubert_rows(ours, 0), _hubert_rows(ref, 1)
    what = "Synthesizer" if model == "synth" else "HuBERT (v2: 12 layers)"
    lines = [f"{what} layer times, {seconds:g} s of audio + 2 s padding, the fastest of the warm calls: "
             f"rvc-mlx {ours['total']:.2f} s, torch {ref['total']:.2f} s in all.", "",
             "| layer group | rvc-mlx s | torch s | rvc-mlx ÷ torch | share of rvc-mlx |",
             "|---|---:|---:|---:|---:|"]
    for name in sorted(a, key=lambda n: -a[n]):
        ratio = f"{a[name] / b[name]:.2f}x" if b[name] > 1e-4 else "–"
        share = 100 * a[name] / ours["total"]
        lines.append(f"| {name} | {a[name]:.3f} | {b[name]:.3f} | {ratio} | {share:.1f}% |")
    return "\n".join(lines) + "\n"


def _inputs(model: str, seconds: float, models_dir: Path) -> dict:
    """The same inputs for both sides (a padded chunk: 1 s either side)."""
    from rvc_mlx.doctor import test_tone
    from rvc_mlx.signal_steps import coarse_pitch

    if model == "hubert":
        return {"audio": test_tone(seconds + 2)[None]}
    manifest = json.loads((models_dir / "manifest.json").read_text())
    frames = int(round((seconds + 2) * 100))
    t = np.arange(frames) / 100
    f0 = (160 + 60 * np.sin(2 * np.pi * 0.6 * t)) * (np.sin(2 * np.pi * 0.9 * t) > -0.4)
    width = 256 if manifest["version"] == "v1" else 768
    content = np.random.default_rng(0).standard_normal((1, frames, width)).astype(np.float32)
    return {"content": content, "pitch": coarse_pitch(f0.copy()).astype(np.int32)[None],
            "f0": f0.astype(np.float32)[None]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models-dir", required=True)
    p.add_argument("--model", choices=["synth", "hubert"], default="synth")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", help="also write the markdown table here")
    p.add_argument("--side", choices=["both", "ours", "torch"], default="both")
    p.add_argument("--inputs", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    models_dir = Path(a.models_dir)
    if a.side != "both":
        sys.path.insert(0, str(HERE))
        side = _side_ours if a.side == "ours" else _side_torch
        result = side(a.model, dict(np.load(a.inputs)), models_dir, a.repeats)
        Path(a.result).write_text(json.dumps(result))
        return 0
    with tempfile.TemporaryDirectory() as work:
        inputs = Path(work) / "inputs.npz"
        np.savez(inputs, **_inputs(a.model, a.seconds, models_dir))
        results = {}
        for side in ("ours", "torch"):
            out = Path(work) / f"{side}.json"
            subprocess.run([sys.executable, __file__, "--side", side, "--model", a.model, "--models-dir",
                            str(models_dir), "--repeats", str(a.repeats), "--inputs", str(inputs),
                            "--result", str(out)], check=True)
            results[side] = json.loads(out.read_text())
    text = report(a.model, results["ours"], results["torch"], a.seconds)
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
