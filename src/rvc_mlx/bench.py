"""``rvc-mlx bench``: time rvc-mlx and the PyTorch reference pipeline on the same models and input.

For each audio length: per stage (f0, HuBERT, retrieval, synthesizer, the rest) and end to end, cold (the
first conversion in a fresh process, after loading) and warm (the best of ``repeats`` further conversions),
model loading, peak host RSS (and GPU memory on a GPU), real-time factor. Each side runs in a process of its
own per length (the OpenBLAS that rvc_mlx loads for MLX slows torch about 4x when both share a process):

* rvc-mlx: ``python -m rvc_mlx.bench worker JOB.json`` (this module), ``VoiceConverter.convert_16k`` with
  ``deterministic=True``; stages are timed by wrapping the internals the pipeline calls (``_f0``,
  ``hubert.content_features``, ``index.blend``, ``synthesizer.infer``), with ``mx.eval`` at each stage end.
* reference: ``benchmarks/reference_worker.py`` (rvc 0.3.5 ``Pipeline.pipeline``, fp32, noise zeroed), only
  from a source checkout with the test extras (``pip install -e .[test]``): torch and rvc are test-only.

Model files are random weights in RVC's real layouts and sizes, made by ``benchmarks/make_models.py`` (or,
without torch, random MLX models in rvc-mlx's native files, timing rvc-mlx alone). Results (markdown table,
JSON and, with matplotlib installed, a PNG chart) go to ``benchmarks/results/<machine>/results-<device>.*``
(written by ``rvc_mlx.bench_report``).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rvc_mlx.bench_report import STAGES, write_report
from rvc_mlx.errors import RVCError
from rvc_mlx.precision import PRECISIONS

REPO = Path(__file__).resolve().parents[2]  # a source checkout has benchmarks/ and tests/ here
BENCH_DIR = REPO / "benchmarks"
# RVC's positional config of a v2 48 kHz voice at the released widths (ours-only random models).
V2_48K_CONFIG = [1025, 32, 192, 192, 768, 2, 6, 3, 0, "1", [3, 7, 11], [[1, 3, 5]] * 3, [12, 10, 2, 2], 512,
                 [24, 20, 4, 4], 109, 256, 48000]


@dataclass(frozen=True)
class BenchOptions:
    """One benchmark run."""

    seconds: tuple[float, ...] = (5.0, 30.0)  # audio lengths to convert, in seconds
    device: str = "cpu"  # MLX device, "cpu" or "gpu"; the reference follows (CUDA) unless reference_device
    repeats: int = 3  # warm conversions after the cold one; "warm" is the best of them
    reference: bool = True  # also time the PyTorch reference (skipped, with a note, when it cannot run)
    reference_device: str = "auto"  # torch device; "auto": cuda for device "gpu" when available, else cpu
    machine: str | None = None  # results folder name; None: OS, architecture and core count
    out_dir: str | None = None  # None: benchmarks/results/<machine> (a checkout) or ./rvc-mlx-bench/<machine>
    models_dir: str | None = None  # model files, made once and reused; None: a temporary directory
    profile: str = "full"  # "full": real sizes (v2 48 kHz voice, HuBERT-base, RMVPE); "tiny": test sizes
    index_mode: str = "ivf"  # rvc-mlx's search: "ivf" visits the lists faiss (nprobe 1) visits, as RVC does
    index_rate: float = 0.75  # share of retrieved features (RVC's default)
    protect: float = 0.33  # RVC's default
    rms_mix_rate: float = 0.25  # RVC's default
    precision: str = "float32"  # rvc-mlx's compute dtype (VoiceConverter.load) or "auto"; the reference: fp32
    warmup: bool = False  # also time, in another process, rvc_mlx.warmup.warm_up and the first call after it
    warmup_seconds: tuple[float, ...] | None = None  # warm-up lengths (s); None: warmup.default_seconds
    kernel_cache: str = "shared"  # "fresh": each rvc-mlx process gets an empty MLX_PTX_CACHE_DIR (CUDA's JIT
    # kernels compiled anew, as on a fresh machine); "shared": MLX's default on-disk cache


def run_bench(seconds: list[float], **options) -> int:
    """Run the benchmark at each length in ``seconds`` (keyword options: ``BenchOptions`` fields)."""
    return _run(BenchOptions(seconds=tuple(float(s) for s in seconds), **options))


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def reference_problem() -> str | None:
    """Why the reference cannot be timed here, or None."""
    if not (BENCH_DIR / "reference_worker.py").is_file() or not (REPO / "tests" / "conftest.py").is_file():
        return "the reference columns need a source checkout of rvc-mlx (benchmarks/ and tests/)"
    needed = ("torch", "rvc", "transformers", "faiss", "omegaconf", "pytest")
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        return f"the reference columns need {', '.join(missing)}: pip install -e .[test]"
    return None


# -- the rvc-mlx worker ------------------------------------------------------------------------------------


def _mb(n_bytes: float) -> float:
    return n_bytes / 2**20


class MemoryProbe:
    """Peak memory between ``start()`` and ``stop()``: MLX's allocations (``mx.get_peak_memory``, after
    ``mx.reset_peak_memory``; on the CPU too) and the process's resident set (Linux: VmHWM after writing
    5 to /proc/self/clear_refs; elsewhere the process's peak so far). MiB."""

    def __init__(self):
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.resettable_rss = True
        except OSError:
            self.resettable_rss = False

    def start(self) -> None:
        import mlx.core as mx

        mx.reset_peak_memory()  # to 0, not to the active memory: a stage that allocates nothing reads 0
        self.active_at_start = mx.get_active_memory()
        if self.resettable_rss:
            Path("/proc/self/clear_refs").write_text("5")

    def stop(self) -> tuple[float, float]:
        """-> (MLX peak MiB, host peak RSS MiB) since ``start``."""
        import mlx.core as mx

        rss = _rss_mb()
        if self.resettable_rss:
            status = Path("/proc/self/status").read_text().splitlines()
            rss = next(float(v.split()[1]) / 1024 for v in status if v.startswith("VmHWM:"))
        return _mb(max(mx.get_peak_memory(), self.active_at_start)), rss


class StageTimer:
    """Wraps the methods a ``VoiceConverter`` calls for each stage (on the converter's own objects) so each
    stage's time accumulates in ``seconds`` and its peak memory (MLX and host RSS, MiB) in ``mlx_mb`` and
    ``rss_mb``; MLX results are evaluated before a stage's clock stops. Between ``begin()`` and ``end()``
    the time and memory outside the wrapped stages go to "rest". ``extra``: more (object, attribute,
    stage) targets, e.g. functions of ``rvc_mlx.signal_steps``; ``close()`` puts every original back."""

    def __init__(self, converter, extra: tuple = ()):
        self.probe = MemoryProbe()
        targets = [(converter, "_f0", "f0"), (converter.hubert, "content_features", "hubert"),
                   (converter.index, "blend", "retrieval"), (converter.synthesizer, "infer", "synth"),
                   *extra]
        self.stages = (*STAGES[:-1], *(stage for _, _, stage in extra), "rest")
        self.begin()
        self._originals = []
        for obj, name, stage in targets:
            if obj is not None:  # object.__setattr__: an instance attribute, past mlx.nn.Module's own setattr
                self._originals.append((obj, name, obj.__dict__.get(name)))
                object.__setattr__(obj, name, self._timed(getattr(obj, name), stage))

    def close(self) -> None:
        for obj, name, original in self._originals:
            if original is None:
                object.__delattr__(obj, name)
            else:
                object.__setattr__(obj, name, original)
        self._originals = []

    def _fold(self, stage: str) -> None:
        mlx_mb, rss_mb = self.probe.stop()
        self.mlx_mb[stage] = max(self.mlx_mb[stage], mlx_mb)
        self.rss_mb[stage] = max(self.rss_mb[stage], rss_mb)

    def _timed(self, fn, stage: str):
        import mlx.core as mx

        def timed(*args, **kwargs):
            self._fold("rest")  # what ran since the last stage
            self.probe.start()
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            if isinstance(out, mx.array):
                mx.eval(out)
            self.seconds[stage] += time.perf_counter() - t0
            self._fold(stage)
            self.probe.start()
            return out

        return timed

    def begin(self) -> None:
        self.seconds = dict.fromkeys(self.stages[:-1], 0.0)
        self.mlx_mb, self.rss_mb = dict.fromkeys(self.stages, 0.0), dict.fromkeys(self.stages, 0.0)
        self.probe.start()

    def end(self) -> dict:
        """-> {"mlx": {stage: MiB, "total": MiB}, "rss": {...}}: the peaks since ``begin()``."""
        self._fold("rest")
        return {"mlx": {**self.mlx_mb, "total": max(self.mlx_mb.values())},
                "rss": {**self.rss_mb, "total": max(self.rss_mb.values())}}


def _load_converter(job: dict, root: Path, manifest: dict):
    """The models of ``manifest`` through ``VoiceConverter.load`` at ``job["precision"]``, evaluated."""
    import inspect

    import mlx.core as mx

    from rvc_mlx.checkpoints.rmvpe import load_rmvpe
    from rvc_mlx.pipeline import VoiceConverter

    extra = {}
    if "precision" in inspect.signature(VoiceConverter.load).parameters:
        extra["precision"] = job["precision"]  # always explicit: the pipeline's own default may differ
    elif job["precision"] != "float32":
        raise RVCError(f"--precision {job['precision']}: this rvc-mlx's VoiceConverter.load has no "
                       "precision= option yet; only float32 can be timed")
    rmvpe = load_rmvpe(root / manifest["rmvpe"]) if manifest["rmvpe"] else None
    converter = VoiceConverter.load(
        root / manifest["voice"], hubert=root / manifest["hubert"], rmvpe=rmvpe,
        index=root / manifest["index"] if manifest["index"] else None, index_mode=job["index_mode"],
        rmvpe_padding="constant", **extra)  # rvc 0.3.5's RMVPE pads its mel with zeros
    mx.eval([m.parameters() for m in (converter.synthesizer, converter.hubert, rmvpe) if m is not None])
    return converter


def _ours_worker(job: dict) -> dict:
    import mlx.core as mx

    from rvc_mlx import __version__, _blas
    from rvc_mlx.pipeline import ConversionOptions
    from rvc_mlx.warmup import warm_up

    gpu = job["device"] == "gpu"
    mx.set_default_device(mx.gpu if gpu else mx.cpu)
    root = Path(job["models_dir"])
    manifest = json.loads((root / "manifest.json").read_text())
    probe = MemoryProbe()

    def load():
        probe.start()
        t0 = time.perf_counter()
        converter = _load_converter(job, root, manifest)
        seconds = time.perf_counter() - t0
        return converter, seconds, dict(zip(("mlx", "rss"), probe.stop(), strict=True))

    converter, load_cold, load_memory = load()
    rss_after_load, active_after_load = _rss_mb(), _mb(mx.get_active_memory())
    timer = StageTimer(converter)
    settings = {"f0_method": manifest["f0_method"], "index_rate": job["index_rate"],
                "protect": job["protect"], "rms_mix_rate": job["rms_mix_rate"], "deterministic": True}
    audio = np.load(job["input"]).astype(np.float32)

    def convert():
        timer.begin()
        t0 = time.perf_counter()
        out, _ = converter.convert_16k(audio, ConversionOptions(**settings))
        total = time.perf_counter() - t0
        memory = timer.end()
        stages = dict(timer.seconds)
        return out, {"total": total, **stages, "rest": total - sum(stages.values())}, memory

    warmup = None
    if job.get("warmup"):  # a warm-up, then the first real call (no warm calls: another process has them)
        w = warm_up(converter, job["warmup_seconds"], **settings)
        warmup = {"seconds": w.elapsed_seconds, "runs": [list(r) for r in w.runs]}
    out, cold, cold_memory = convert()
    warm_runs = [convert()[1:] for _ in range(job["repeats"])]
    best = min(range(len(warm_runs)), key=lambda i: warm_runs[i][0]["total"]) if warm_runs else None
    info = mx.device_info() if hasattr(mx, "device_info") else {}
    memory = {"load": load_memory, "cold": cold_memory, "warm": warm_runs[best][1] if warm_runs else None,
              "mlx_active_after_load_mb": active_after_load, "mlx_cache_mb": _mb(mx.get_cache_memory())}
    mlx_peak = max([load_memory["mlx"], cold_memory["mlx"]["total"],
                    *(m["mlx"]["total"] for _, m in warm_runs)])
    result = {
        "impl": "rvc-mlx",
        "device": f"{'gpu' if gpu else 'cpu'} ({info.get('device_name', '?')})",
        "threads": _blas.blas_threads() if _blas.loaded_from else None,  # OpenBLAS's; MLX's own CPU ops: 1
        "versions": {"rvc-mlx": __version__, "mlx": mx.__version__,
                     "BLAS": os.path.basename(_blas.loaded_from or "MLX's own")},
        "precision": getattr(converter, "precision", "float32"),  # as resolved ("auto" -> a dtype)
        "cold": cold,
        "warm": warm_runs[best][0] if warm_runs else None,
        "warm_totals": [r["total"] for r, _ in warm_runs],
        "rss_after_load_mb": rss_after_load,
        "peak_rss_mb": _rss_mb(),
        "mlx_peak_mb": mlx_peak,
        "gpu_peak_mb": mlx_peak if gpu else None,
        "memory": memory,
        "warmup": warmup,
    }
    np.save(job["output"], np.asarray(out, dtype=np.float32))
    if not job.get("warmup"):
        converter = timer = None  # freed before the second load
        gc.collect()
        result["load"] = {"cold": load_cold, "warm": load()[1]}  # a second load: files cached, code warm
    return result


# -- model files -------------------------------------------------------------------------------------------


def _random_models(out: Path) -> dict:
    """Without torch: random MLX models of the full profile's sizes in native files (rvc-mlx alone)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from rvc_mlx.checkpoints.native import save_native
    from rvc_mlx.index import FeatureIndex
    from rvc_mlx.models.hubert import HubertConfig, HubertModel
    from rvc_mlx.models.rmvpe import RMVPE, RMVPEConfig
    from rvc_mlx.models.synthesizer import Synthesizer, VoiceConfig

    out.mkdir(parents=True, exist_ok=True)
    mx.random.seed(0)
    voice = Synthesizer(VoiceConfig.from_rvc(V2_48K_CONFIG, version="v2", f0=True))
    save_native(out / "voice.safetensors", dict(tree_flatten(voice.parameters())), "voice",
                {"rvc_config": V2_48K_CONFIG, "version": "v2", "f0": 1})
    hubert_config = HubertConfig(final_proj_size=256)
    save_native(out / "hubert.safetensors", dict(tree_flatten(HubertModel(hubert_config).parameters())),
                "hubert", {"config": asdict(hubert_config)})
    rmvpe_config = RMVPEConfig()
    save_native(out / "rmvpe.safetensors", dict(tree_flatten(RMVPE(rmvpe_config).parameters())), "rmvpe",
                {"config": rmvpe_config.to_dict()})
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((20000, 768)).astype(np.float32)
    centroids = vectors[rng.choice(len(vectors), 512, replace=False)]
    dist = (centroids**2).sum(1)[None] - 2 * vectors @ centroids.T  # (N, lists), up to |x|² per row
    index = FeatureIndex(vectors, centroids, dist.argmin(1).astype(np.int32))
    (out / "random.index").write_bytes(index.to_faiss_bytes())
    manifest = {"profile": "full", "version": "v2", "f0": 1, "sample_rate": 48000, "f0_method": "rmvpe",
                "voice": "voice.safetensors", "hubert": "hubert.safetensors", "rmvpe": "rmvpe.safetensors",
                "index": "random.index", "description": "random MLX models: v2 48 kHz pitch voice (released "
                "widths), HuBERT-base, RMVPE, IVF512 index of 20000 vectors (rvc-mlx native files)"}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def _models(options: BenchOptions, models_dir: Path, with_reference: bool) -> dict:
    path = models_dir / "manifest.json"
    if path.is_file():
        manifest = json.loads(path.read_text())
        if manifest["profile"] == options.profile and ("hubert_names" in manifest or not with_reference):
            print(f"reusing the model files in {models_dir}", flush=True)
            return manifest
    t0 = time.perf_counter()
    if with_reference:
        _child([str(BENCH_DIR / "make_models.py"), "--profile", options.profile, "--out", str(models_dir)],
               "making the model files")
        manifest = json.loads(path.read_text())
    elif options.profile == "full":
        manifest = _random_models(models_dir)
    else:
        raise SystemExit(f"profile {options.profile!r} needs the reference's model builders (torch)")
    print(f"model files made in {time.perf_counter() - t0:.1f} s: {manifest['description']}", flush=True)
    return manifest


# -- orchestration -----------------------------------------------------------------------------------------


class WorkerFailed(RuntimeError):
    pass


def _child(args: list[str], what: str, env: dict | None = None) -> None:
    run = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise WorkerFailed(f"{what} failed (exit {run.returncode}):\n{(run.stdout + run.stderr)[-4000:]}")


def _worker(kind: str, job: dict, work: Path, fresh_kernel_cache: bool = False) -> dict:
    """Run one side (kind "ours", "ours-warmup" or "reference") in a process of its own -> its result."""
    job_path = work / f"job-{kind}-{job['seconds']:g}.json"
    job = {**job, "output": str(work / f"out-{kind}-{job['seconds']:g}.npy"),
           "result": str(work / f"result-{kind}-{job['seconds']:g}.json"), "warmup": kind == "ours-warmup"}
    job_path.write_text(json.dumps(job))
    load_before = os.getloadavg()[0]
    script = ["-m", "rvc_mlx.bench", "worker", str(job_path)] if kind != "reference" else \
        [str(BENCH_DIR / "reference_worker.py"), str(job_path)]
    env = None
    if fresh_kernel_cache and kind != "reference":
        env = {**os.environ, "MLX_PTX_CACHE_DIR": tempfile.mkdtemp(prefix="ptx-", dir=work)}
    _child(script, f"the {kind} worker at {job['seconds']:g} s", env)
    result = json.loads(Path(job["result"]).read_text())
    result["loadavg"] = [load_before, os.getloadavg()[0]]
    result["output"] = job["output"]
    return result


def _machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    if os.path.isfile("/proc/cpuinfo"):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {"cpu": cpu, "cores": _cores(), "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version()}


def _run(options: BenchOptions) -> int:
    if options.device not in ("cpu", "gpu") or options.repeats < 1 or options.profile not in ("full", "tiny"):
        raise RVCError(f"bench: device must be cpu or gpu ({options.device!r}), repeats at least 1 "
                       f"({options.repeats}), profile full or tiny ({options.profile!r})")
    if options.precision not in PRECISIONS or options.kernel_cache not in ("shared", "fresh"):
        raise RVCError(f"bench: precision must be one of {', '.join(PRECISIONS)} ({options.precision!r}), "
                       f"kernel_cache shared or fresh ({options.kernel_cache!r})")
    machine = options.machine or f"{platform.system().lower()}-{platform.machine()}-{_cores()}core"
    if options.out_dir:
        out_dir = Path(options.out_dir)
    elif BENCH_DIR.is_dir():
        out_dir = BENCH_DIR / "results" / machine
    else:
        out_dir = Path.cwd() / "rvc-mlx-bench" / machine
    problem = reference_problem() if options.reference else "the reference was not asked for"
    if problem and options.reference:
        print(f"note: timing rvc-mlx only; {problem}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="rvc-mlx-bench-"))
    models_dir = Path(options.models_dir) if options.models_dir else work / "models"
    from rvc_mlx.doctor import test_tone

    status = 0
    runs = []
    try:
        manifest = _models(options, models_dir, problem is None)
        for seconds in options.seconds:
            audio_path = work / f"input-{seconds:g}.npy"
            np.save(audio_path, test_tone(seconds))
            job = {"seconds": seconds, "input": str(audio_path), "models_dir": str(models_dir),
                   "device": options.device, "reference_device": options.reference_device,
                   "repeats": options.repeats, "index_mode": options.index_mode,
                   "index_rate": options.index_rate, "protect": options.protect,
                   "rms_mix_rate": options.rms_mix_rate, "precision": options.precision,
                   "warmup_seconds": options.warmup_seconds}
            entry = {"seconds": seconds, "results": []}
            kinds = ["ours", *(["ours-warmup"] if options.warmup else []),
                     *(["reference"] if problem is None else [])]
            for kind in kinds:
                print(f"{seconds:g} s: timing {kind} ...", flush=True)
                try:
                    result = _worker(kind, {**job, "repeats": 0} if kind == "ours-warmup" else job, work,
                                     options.kernel_cache == "fresh")
                except WorkerFailed as e:
                    print(e, file=sys.stderr, flush=True)
                    status = 1
                    continue
                if kind != "ours-warmup":
                    entry["results"].append(result)
                elif entry["results"] and entry["results"][0]["impl"] == "rvc-mlx":
                    entry["results"][0]["warmup"] = {**result["warmup"], "first_call": result["cold"],
                                                     "first_call_memory": result["memory"]["cold"]}
            outputs = [np.load(r.pop("output")) for r in entry["results"]]
            if len(outputs) == 2:
                ours, ref = outputs
                entry["output_rel_err"] = (float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))
                                           if ours.shape == ref.shape else None)
            runs.append(entry)
        run_info = {"machine": machine, "device": options.device, "date": time.strftime("%Y-%m-%d %H:%M"),
                    "host": _machine_info(), "options": asdict(options), "models": manifest["description"],
                    "reference_note": problem}
        paths = write_report(out_dir, run_info, runs)
        print(Path(paths["md"]).read_text())
        print("written: " + ", ".join(str(p) for p in paths.values()), flush=True)
    except WorkerFailed as e:
        print(e, file=sys.stderr)
        status = 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return status


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        job = json.loads(Path(argv[1]).read_text())
        Path(job["result"]).write_text(json.dumps(_ours_worker(job), indent=1))
        return 0
    from rvc_mlx.cli import add_bench_arguments

    p = argparse.ArgumentParser(prog="python -m rvc_mlx.bench", description=__doc__.splitlines()[0])
    add_bench_arguments(p)
    return run_from_args(p.parse_args(argv))


def run_from_args(a: argparse.Namespace) -> int:
    return run_bench(a.seconds, device=a.device, repeats=a.repeats, reference=not a.no_reference,
                     reference_device=a.reference_device, machine=a.machine, out_dir=a.out,
                     models_dir=a.models_dir, profile=a.profile, precision=a.precision, warmup=a.warmup,
                     warmup_seconds=tuple(a.warmup_seconds) if a.warmup_seconds else None,
                     kernel_cache=a.kernel_cache)

if __name__ == "__main__":
    sys.exit(main())
