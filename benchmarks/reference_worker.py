"""The PyTorch side of the benchmark: rvc 0.3.5's ``Pipeline.pipeline`` (fp32), timed in a process of its own.

Started by ``rvc_mlx.bench`` as ``python benchmarks/reference_worker.py JOB.json``. It never imports rvc_mlx
or MLX: the OpenBLAS that rvc_mlx loads for MLX slows torch's CPU kernels about 4x when both share a process.

Models are loaded from the same files rvc-mlx reads, the way RVC loads them: the voice as ``VC.get_vc`` does
(rvc 0.3.5 classes, ``enc_q`` dropped, float32), RMVPE with ``rvc.lib.rmvpe.RMVPE``; HuBERT from the fairseq
``hubert_base.pt`` into transformers' ``HubertModel`` (fairseq itself is not installable here; RVC calls
fairseq's ``extract_features(...)[0]`` and ``final_proj``, which the adapter below provides). Noise is off:
``torch.randn_like`` returns zeros. Stage times: ``f0``, ``npy`` (HuBERT + retrieval) and ``infer``
(synthesizer) from the pipeline's own ``times`` dict, HuBERT alone from a wrapper around
``extract_features`` (retrieval = npy - HuBERT), and the rest = wall clock - the three.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parents[1] / "tests"


def _rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class FairseqAdapter:
    """What RVC's pipeline calls on fairseq's HubertModel, over transformers' HubertModel."""

    def __init__(self, model, final_proj, sync):
        self.model = model
        self.final_proj = final_proj
        self.sync = sync  # waits for the device (CUDA) so the HuBERT time is the compute time
        self.seconds = 0.0  # accumulated time inside extract_features

    def extract_features(self, source, padding_mask=None, output_layer=None):
        import torch

        self.sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = self.model(source.float(), output_hidden_states=True)
        self.sync()
        self.seconds += time.perf_counter() - t0
        return (out.hidden_states[output_layer],)


def cores() -> int:
    """The CPU cores this process may use (torch's thread count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def load_voice(path, device: str):
    """An RVC voice ``.pth`` as ``VC.get_vc`` loads it: rvc 0.3.5's class, ``enc_q`` dropped, fp32."""
    import torch
    from rvc.lib.infer_pack import models

    classes = {("v1", 1): models.SynthesizerTrnMs256NSFsid, ("v1", 0): models.SynthesizerTrnMs256NSFsid_nono,
               ("v2", 1): models.SynthesizerTrnMs768NSFsid, ("v2", 0): models.SynthesizerTrnMs768NSFsid_nono}
    cpt = torch.load(path, map_location="cpu")
    cpt["config"][-3] = cpt["weight"]["emb_g.weight"].shape[0]
    net_g = classes[(cpt.get("version", "v1"), cpt.get("f0", 1))](*cpt["config"], is_half=False)
    del net_g.enc_q
    missing, _ = net_g.load_state_dict(cpt["weight"], strict=False)
    if missing:
        raise RuntimeError(f"voice weights missing: {missing[:5]}")
    return net_g.eval().to(device).float()


def load_models(manifest: dict, root: Path, device: str):
    """-> (net_g, hubert adapter, RMVPE) on ``device``, loaded from the manifest's files."""
    from rvc.lib.rmvpe import RMVPE

    net_g = load_voice(root / manifest["voice"], device)
    hubert = load_hubert(root / manifest["hubert"], manifest, device)
    rmvpe = None
    if manifest["rmvpe"]:
        rmvpe = RMVPE(str(root / manifest["rmvpe"]), is_half=False, device=device)
    hubert.sync()
    return net_g, hubert, rmvpe


def load_hubert(path, manifest: dict, device: str) -> FairseqAdapter:
    """RVC's fairseq ``hubert_base.pt`` in transformers' HubertModel (config and names from the manifest)."""
    import torch
    import transformers

    ckpt = torch.load(path, map_location="cpu", weights_only=False)  # holds its omegaconf cfg
    weights = ckpt["model"]
    config = transformers.HubertConfig(**manifest["hubert_config"])
    hubert = transformers.HubertModel(config).eval()
    hubert.load_state_dict({hf: weights[fs].float() for fs, hf in manifest["hubert_names"].items()})
    proj_w = weights["final_proj.weight"]
    final_proj = torch.nn.Linear(proj_w.shape[1], proj_w.shape[0])
    final_proj.load_state_dict({"weight": proj_w.float(), "bias": weights["final_proj.bias"].float()})
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    return FairseqAdapter(hubert.to(device), final_proj.eval().to(device), sync)


def run(job: dict) -> dict:
    import transformers  # noqa: F401  (before the stub: transformers probes torchaudio's module spec)

    sys.path.insert(0, str(TESTS))
    from conftest import _stub_torchaudio  # the reference's import chain reaches torchaudio (not installed)

    _stub_torchaudio()
    import torch
    from rvc.modules.vc import pipeline as ref_pipeline

    torch.set_num_threads(cores())
    torch.randn_like = torch.zeros_like  # deterministic: every noise draw zero (as tests/test_pipeline.py)
    device = job["reference_device"]
    if device == "auto":
        device = "cuda" if job["device"] == "gpu" and torch.cuda.is_available() else "cpu"
    cuda = device.startswith("cuda")
    # Same precision as rvc-mlx: TF32 only if MLX_ENABLE_TF32=1 (rvc-mlx's default is exact float32; torch's
    # own default runs cuDNN convolutions in TF32).
    tf32 = os.environ.get("MLX_ENABLE_TF32", "0") == "1"
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    root = Path(job["models_dir"])
    manifest = json.loads((root / "manifest.json").read_text())
    if manifest["rmvpe"]:
        os.environ["rmvpe_root"] = str(root)

    def load():
        t0 = time.perf_counter()
        loaded = load_models(manifest, root, device)
        return loaded, time.perf_counter() - t0

    (net_g, hubert, rmvpe), load_cold = load()
    rss_after_load = _rss_mb()
    audio = np.load(job["input"]).astype(np.float32)
    config = type("Config", (), dict(x_pad=1, x_query=6, x_center=38, x_max=41, is_half=False, device=device))
    pipe = ref_pipeline.Pipeline(manifest["sample_rate"], config)
    if rmvpe is not None:
        pipe.model_rmvpe = rmvpe
    index_path = str(root / manifest["index"]) if manifest["index"] else ""

    def convert():
        x = audio.copy()
        peak = np.abs(x).max() / 0.95  # vc_single's input scaling
        if peak > 1:
            x /= peak
        times = {"npy": 0.0, "f0": 0.0, "infer": 0.0}
        hubert.seconds = 0.0
        t0 = time.perf_counter()
        out = pipe.pipeline(hubert, net_g, 0, x, "input.wav", times, 0, manifest["f0_method"], index_path,
                            job["index_rate"], manifest["f0"], 3, manifest["sample_rate"], 0,
                            job["rms_mix_rate"], manifest["version"], job["protect"])
        total = time.perf_counter() - t0
        stages = {"f0": times["f0"], "hubert": hubert.seconds, "retrieval": times["npy"] - hubert.seconds,
                  "synth": times["infer"]}
        stages["rest"] = total - times["f0"] - times["npy"] - times["infer"]
        return out, {"total": total, **stages}

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    out, cold = convert()
    warm_runs = [convert()[1] for _ in range(job["repeats"])]
    result = {
        "impl": "torch",
        "device": device,
        "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__},
        "cold": cold,
        "warm": min(warm_runs, key=lambda r: r["total"]) if warm_runs else None,
        "warm_totals": [r["total"] for r in warm_runs],
        "rss_after_load_mb": rss_after_load,
        "peak_rss_mb": _rss_mb(),
        "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }
    np.save(job["output"], out.astype(np.float32) / 32768)  # int16 -> the float scale rvc-mlx returns
    pipe = net_g = hubert = rmvpe = None  # freed before the second load
    gc.collect()
    result["load"] = {"cold": load_cold, "warm": load()[1]}  # a second load: files cached, libraries warm
    return result


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text())
    result = run(job)
    Path(job["result"]).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
