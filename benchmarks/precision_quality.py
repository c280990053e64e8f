"""Quality and speed of half precision (float16, bfloat16) against float32, per stage and end to end.

    python benchmarks/precision_quality.py --models-dir /tmp/benchmodels --out DIR [--device gpu]

Converts the same inputs (``tests/data/speech_16k.wav`` and a synthetic sung phrase) with one converter per
precision on the same model files (full-size random weights from ``benchmarks/make_models.py``, made into
``--models-dir`` when it holds none; noise zeroed, ``deterministic=True``) and reports against float32:

* f0 (RMVPE on the same padded signal): cents error on frames voiced at both precisions (mean, 99th
  percentile, max) and voicing agreement (share of frames with the same voiced/unvoiced decision);
* HuBERT features on the same chunk: relative error max|half − fp32| / max|fp32| and RMS relative error;
* synthesizer alone (the float32 run's features, pitch and f0 fed to each precision's synthesizer) and the
  whole conversion: output SNR in dB (10·log10(Σ ref² / Σ (out − ref)²)) and log-mel distance in dB
  (RMS over frames and 80 mel bands of the dB difference, both spectra floored 80 dB under the reference's
  peak);
* time per conversion (best of ``--repeats`` warm calls) and its ratio to float32.

Half precision on the CPU device is only allowed through ``RVC_MLX_CPU_HALF=1``, which this script sets: on
the CPU its figures predict a GPU's quality (same dtypes and rounding points), not its speed (MLX's CPU has
no half GEMM). Writes ``precision-quality.md`` and ``precision-quality.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import rvc_mlx  # before any mlx.core import: loads the fast BLAS

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO / "tests" / "data" / "speech_16k.wav"
PRECISIONS = ("float32", "float16", "bfloat16")
FLOOR_DB = 80.0  # log-mel spectra are floored this far under the reference's peak


def sung_phrase(seconds: float, seed: int = 0) -> np.ndarray:
    """16 kHz synthetic singing: three held notes with vibrato, 12 harmonics under a vowel-like envelope,
    short breaths between notes, a little noise. float32 (N,)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    notes = np.array([220.0, 261.6, 329.6])[np.minimum((t / seconds * 3).astype(int), 2)]
    f0 = notes * 2 ** (0.5 / 12 * np.sin(2 * np.pi * 5.5 * t))  # ±50 cents vibrato at 5.5 Hz
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    voice = sum(np.sin(k * phase) * np.exp(-((k * f0 - 700) / 900) ** 2) / k**0.5 for k in range(1, 13))
    gate = np.clip(np.sin(np.pi * (t * 3 / seconds % 1)) * 4, 0, 1)  # a breath at each note change
    audio = 0.3 * voice * gate + 0.003 * rng.standard_normal(t.size)
    return (audio / np.abs(audio).max() * 0.6).astype(np.float32)


def snr_db(out: np.ndarray, ref: np.ndarray) -> float:
    n = min(out.size, ref.size)
    err = np.sum((out[:n].astype(np.float64) - ref[:n]) ** 2)
    return float("inf") if err == 0 else float(10 * np.log10(np.sum(ref[:n].astype(np.float64) ** 2) / err))


def log_mel_db(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """(frames, 80) power mel spectrum in dB: 2048-point Hann STFT, hop 512 (numpy)."""
    from rvc_mlx.dsp import mel_filterbank

    n_fft, hop = 2048, 512
    x = np.pad(audio.astype(np.float64), n_fft // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * np.hanning(n_fft + 1)[:-1]
    power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2  # (frames, bins)
    mel = power @ mel_filterbank(sample_rate, n_fft, 80).T.astype(np.float64)
    return 10 * np.log10(np.maximum(mel, 1e-20))


def log_mel_distance_db(out: np.ndarray, ref: np.ndarray, sample_rate: int) -> float:
    n = min(out.size, ref.size)
    a, b = log_mel_db(out[:n], sample_rate), log_mel_db(ref[:n], sample_rate)
    floor = b.max() - FLOOR_DB
    return float(np.sqrt(np.mean((np.maximum(a, floor) - np.maximum(b, floor)) ** 2)))


def f0_figures(f0: np.ndarray, ref: np.ndarray) -> dict:
    voiced, voiced_ref = f0 > 0, ref > 0
    both = voiced & voiced_ref
    cents = 1200 * np.abs(np.log2(f0[both] / ref[both])) if both.any() else np.zeros(1)
    return {"voicing_agreement": float(np.mean(voiced == voiced_ref)), "voiced_frames": int(voiced_ref.sum()),
            "cents_mean": float(cents.mean()), "cents_p99": float(np.percentile(cents, 99)),
            "cents_max": float(cents.max())}


class Recorder:
    """Wraps a converter's stage methods (instance attributes) to keep each call's arguments and result."""

    def __init__(self, converter):
        self.calls: dict[str, list] = {"f0": [], "hubert": [], "synth": []}
        for obj, name, stage in [(converter, "_f0", "f0"), (converter.hubert, "content_features", "hubert"),
                                 (converter.synthesizer, "infer", "synth")]:
            object.__setattr__(obj, name, self._wrap(getattr(obj, name), stage))

    def _wrap(self, fn, stage):
        def recorded(*args, **kwargs):
            out = fn(*args, **kwargs)
            self.calls[stage].append((args, kwargs, out))
            return out

        return recorded


def _load(root: Path, manifest: dict, precision: str):
    from rvc_mlx.checkpoints.hubert import load_hubert
    from rvc_mlx.checkpoints.rmvpe import load_rmvpe
    from rvc_mlx.checkpoints.voice import load_voice
    from rvc_mlx.index import FeatureIndex
    from rvc_mlx.pipeline import VoiceConverter

    index = FeatureIndex.load(root / manifest["index"]) if manifest.get("index") else None
    converter = VoiceConverter(load_voice(root / manifest["voice"]), load_hubert(root / manifest["hubert"]),
                          index=index, index_mode="ivf", rmvpe=load_rmvpe(root / manifest["rmvpe"]),
                          rmvpe_padding="constant", precision=precision)
    if precision != "float32":  # HuBERT's CPU fast path is float32-only: its plain-MLX path (the GPU's)
        features = _plain_mlx(converter.hubert.content_features)
        object.__setattr__(converter.hubert, "content_features", features)
    return converter


def _plain_mlx(fn):
    from rvc_mlx.models.conv import conv_impl

    def plain(*args, **kwargs):
        with conv_impl("mlx"):
            return fn(*args, **kwargs)

    return plain


def _np(x) -> np.ndarray:
    import mlx.core as mx

    return np.array(x.astype(mx.float32) if isinstance(x, mx.array) else x, dtype=np.float32)


def measure(root: Path, inputs: dict[str, np.ndarray], precisions: list[str], repeats: int) -> dict:
    from rvc_mlx.pipeline import ConversionOptions
    from rvc_mlx.precision import parameter_dtypes

    options = ConversionOptions(index_rate=0.75, protect=0.33, rms_mix_rate=0.25, deterministic=True)
    manifest = json.loads((root / "manifest.json").read_text())
    results: dict = {"inputs": {}, "weights": {}}
    reference: dict = {}
    for precision in precisions:  # float32 first: the others are compared with its recorded stages
        converter = _load(root, manifest, precision)
        results["weights"][precision] = {"synthesizer": parameter_dtypes(converter.synthesizer),
                                         "hubert": parameter_dtypes(converter.hubert),
                                         "rmvpe": parameter_dtypes(converter._rmvpe_model())}
        recorder = Recorder(converter) if precision == "float32" else None
        rate = converter.config.sample_rate
        for name, audio in inputs.items():
            t0 = time.perf_counter()
            out, _ = converter.convert_16k(audio, options)  # cold (recorded at float32)
            times = [time.perf_counter() - t0] if repeats == 0 else []
            for _ in range(repeats):
                t0 = time.perf_counter()
                converter.convert_16k(audio, options)
                times.append(time.perf_counter() - t0)
            row = {"seconds_audio": audio.size / 16000, "time_s": min(times)}
            if precision == "float32":
                reference[name] = {"out": out, **{k: v[:] for k, v in recorder.calls.items()}}
                for calls in recorder.calls.values():
                    calls.clear()
            else:
                ref = reference[name]
                (padded, p_len, opts), _, f0_ref = ref["f0"][0]
                f0 = converter._f0(padded, p_len, opts)
                (chunk, version), _, feats_ref = ref["hubert"][0]
                feats, feats_ref = _np(converter.hubert.content_features(chunk, version)), _np(feats_ref)
                diff = feats - feats_ref
                synth_args, synth_kwargs, wave_ref = ref["synth"][0]
                wave = _np(converter.synthesizer.infer(*synth_args, **synth_kwargs)).reshape(-1)
                wave_ref = _np(wave_ref).reshape(-1)
                row.update({
                    "f0": f0_figures(np.asarray(f0), np.asarray(f0_ref)),
                    "hubert_rel_err_max": float(np.abs(diff).max() / np.abs(feats_ref).max()),
                    "hubert_rel_err_rms": float(np.sqrt(np.mean(diff**2) / np.mean(feats_ref**2))),
                    "synth_snr_db": snr_db(wave, wave_ref),
                    "synth_log_mel_db": log_mel_distance_db(wave, wave_ref, rate),
                    "output_snr_db": snr_db(out, ref["out"]),
                    "output_log_mel_db": log_mel_distance_db(out, ref["out"], rate),
                    "output_dtype": str(out.dtype),
                })
            results["inputs"].setdefault(name, {})[precision] = row
            print(f"{precision:9s} {name:7s} {json.dumps(row)}", flush=True)
        del converter
    return results


def markdown(info: dict, results: dict) -> str:
    lines = [f"# Half precision vs float32: {info['device']}", "",
             f"- host: {info['host']}; mlx {info['mlx']}; rvc-mlx {info['rvc_mlx']}",
             f"- models: {info['models']}",
             "- conversion: index rate 0.75 (ivf), protect 0.33, RMS mix 0.25, noise zeroed; times: "
             + (f"the best of {info['repeats']} warm conversions" if info["repeats"] else "first conversion"),
             "- f0: RMVPE on the float32 run's padded signal; HuBERT: the float32 run's chunk; synthesizer: "
             "the float32 run's features, pitch and f0; output: the whole conversion", ""]
    header = ("| input | precision | time s | × fp32 | f0 voicing agree | f0 cents mean / p99 / max | "
              "HuBERT rel err max / rms | synth SNR dB | synth log-mel dB | output SNR dB | "
              "output log-mel dB |")
    lines += [header, "|---|---|---:|---:|---:|---|---|---:|---:|---:|---:|"]
    for name, rows in results["inputs"].items():
        base = rows["float32"]["time_s"]
        for precision, r in rows.items():
            if precision == "float32":
                lines.append(f"| {name} ({r['seconds_audio']:.1f} s) | float32 | {r['time_s']:.2f} | 1.00 | "
                             "– | – | – | – | – | – | – |")
                continue
            f = r["f0"]
            lines.append(
                f"| {name} | {precision} | {r['time_s']:.2f} | {r['time_s'] / base:.2f} | "
                f"{100 * f['voicing_agreement']:.1f}% | {f['cents_mean']:.2f} / {f['cents_p99']:.1f} / "
                f"{f['cents_max']:.1f} | {r['hubert_rel_err_max']:.1e} / {r['hubert_rel_err_rms']:.1e} | "
                f"{r['synth_snr_db']:.1f} | {r['synth_log_mel_db']:.2f} | {r['output_snr_db']:.1f} | "
                f"{r['output_log_mel_db']:.2f} |")
    lines += ["", "Parameters per dtype after casting:", ""]
    for precision, models in results["weights"].items():
        parts = "; ".join(f"{m}: " + ", ".join(f"{k} {v:,}" for k, v in c.items()) for m, c in models.items())
        lines.append(f"- {precision}: {parts}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", required=True, help="make_models.py's files (made here if absent)")
    parser.add_argument("--out", required=True, help="folder for precision-quality.md / .json")
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS[1:]), choices=PRECISIONS[1:])
    parser.add_argument("--sung-seconds", type=float, default=3.0, help="length of the synthetic sung input")
    parser.add_argument("--speech-seconds", type=float, default=None, help="cut the speech input (s)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="warm conversions timed per precision (0: time the first, cold one)")
    args = parser.parse_args(argv)

    os.environ["RVC_MLX_CPU_HALF"] = "1"  # half precision on the CPU device: measurement only
    root = Path(args.models_dir)
    if not (root / "manifest.json").is_file():
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "make_models.py"), "--profile", "full",
                        "--out", str(root)], check=True)
    import mlx.core as mx
    import soundfile as sf

    mx.set_default_device(mx.gpu if args.device == "gpu" else mx.cpu)
    speech, _ = sf.read(SPEECH, dtype="float32")
    if args.speech_seconds:
        speech = speech[: int(16000 * args.speech_seconds)]
    inputs = {"speech": speech, "sung": sung_phrase(args.sung_seconds)}
    results = measure(root, inputs, ["float32", *args.precisions], args.repeats)
    device_info = mx.device_info() if hasattr(mx, "device_info") else {}
    manifest = json.loads((root / "manifest.json").read_text())
    info = {"device": f"{args.device} ({device_info.get('device_name', platform.processor() or '?')})",
            "host": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
            "mlx": mx.__version__, "rvc_mlx": rvc_mlx.__version__, "repeats": args.repeats,
            "models": manifest.get("description", "?")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "precision-quality.json").write_text(json.dumps({"info": info, **results}, indent=1))
    text = markdown(info, results)
    (out / "precision-quality.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
