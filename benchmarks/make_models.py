"""Write the benchmark's random-weight model files in RVC's real layouts, plus a manifest for both sides.

Run by ``rvc_mlx.bench`` in a process of its own (it needs torch and the test helpers in tests/):

    python benchmarks/make_models.py --profile full --out DIR

Files: ``voice.pth`` (rvc 0.3.5 synthesizer, float16 weights as RVC saves them), ``hubert_base.pt``
(fairseq layout), ``rmvpe.pt`` and an RVC faiss IVF-Flat ``.index`` (all from tests/reference_models.py),
and ``manifest.json``: file names, the voice's version/f0/sample rate, the f0 method, and what the reference
side needs to rebuild HuBERT from ``hubert_base.pt`` without fairseq (the transformers config and the
fairseq -> transformers parameter names).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"

# What each profile builds. "full": the sizes RVC runs (a v2 48 kHz voice at the released widths, HuBERT-base,
# full RMVPE, an index the size a ~7-minute training set gives); "tiny": reduced widths with the real
# structure, for the harness's own test.
PROFILES = {
    "full": dict(
        version="v2", f0=1, sample_rate=48000, full_voice=True, f0_method="rmvpe",
        hubert=dict(intermediate_size=3072, conv_dim=(512,) * 7),  # over reference_models.HUBERT_TEST
        index_vectors=20000, index_lists=512,  # RVC's n_ivf = min(16·sqrt(N), N // 39)
    ),
    "tiny": dict(
        version="v1", f0=1, sample_rate=40000, full_voice=False, f0_method="pm",
        hubert=dict(hidden_size=64, num_hidden_layers=12, num_attention_heads=4, intermediate_size=128,
                    conv_dim=(32,) * 7),
        index_vectors=400, index_lists=8,
    ),
}
MANIFEST = "manifest.json"


def make_models(profile: str, out: Path, seed: int = 0) -> dict:
    """Write the files of ``profile`` into ``out`` -> the manifest (also written as ``out/manifest.json``)."""
    sys.path.insert(0, str(TESTS))
    import conftest  # noqa: F401  (stubs torchaudio, which the reference's import chain reaches)
    import reference_models as rm

    spec = PROFILES[profile]
    out.mkdir(parents=True, exist_ok=True)
    version = spec["version"]
    rm.make_voice(out / "voice.pth", version, spec["f0"], spec["sample_rate"], full=spec["full_voice"],
                  seed=seed)
    hubert_config = {**rm.HUBERT_TEST, **spec["hubert"]}
    reference_hubert = rm.make_hubert(out / "hubert_base.pt", seed=seed, **spec["hubert"])
    hf_names = list(reference_hubert.model.state_dict())
    fairseq_names = rm._to_fairseq({name: name for name in hf_names})  # fairseq name -> transformers name
    rmvpe = None
    if spec["f0_method"] == "rmvpe":
        rmvpe = "rmvpe.pt"
        # voiced_logit: random weights still give voiced frames (so the synthesizer's NSF source has pitch)
        rm.make_rmvpe(out / rmvpe, seed=seed, voiced_logit=4.0)
    dim = 256 if version == "v1" else 768
    index = f"added_IVF{spec['index_lists']}_Flat_nprobe_1_bench_{version}.index"
    rm.make_index(out / index, dim, n_vectors=spec["index_vectors"], n_lists=spec["index_lists"], seed=seed)
    manifest = {
        "profile": profile,
        "version": version,
        "f0": spec["f0"],
        "sample_rate": spec["sample_rate"],
        "f0_method": spec["f0_method"],
        "voice": "voice.pth",
        "hubert": "hubert_base.pt",
        "rmvpe": rmvpe,
        "index": index,
        "hubert_config": {k: list(v) if isinstance(v, tuple) else v for k, v in hubert_config.items()},
        "hubert_names": fairseq_names,
        "description": describe(spec) + " (RVC's file layouts)",
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def describe(spec: dict) -> str:
    """One line naming what the profile's models are."""
    h = {**{"hidden_size": 768, "num_hidden_layers": 12, "intermediate_size": 3072}, **spec["hubert"]}
    voice = "released widths" if spec["full_voice"] else "reduced widths"
    return (f"{spec['version']} {spec['sample_rate'] // 1000} kHz pitch voice ({voice}); HuBERT "
            f"{h['num_hidden_layers']}x{h['hidden_size']}, FFN {h['intermediate_size']}, conv "
            f"{h['conv_dim'][0]} ch; f0 {spec['f0_method']}; faiss IVF{spec['index_lists']},Flat index of "
            f"{spec['index_vectors']} vectors")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument("--out", required=True, help="directory for the model files and manifest.json")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    make_models(args.profile, Path(args.out), args.seed)
    print(f"models ({args.profile}) written to {os.path.abspath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
