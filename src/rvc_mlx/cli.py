"""The ``rvc-mlx`` command: a parser and thin calls into the library."""

from __future__ import annotations

import argparse
import sys

from rvc_mlx.errors import RVCError
from rvc_mlx.precision import PRECISIONS


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options (``python -m rvc_mlx.bench`` and ``rvc-mlx bench``)."""
    p.add_argument("--seconds", type=float, nargs="+", default=[5.0, 30.0], help="audio lengths (s)")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--repeats", type=int, default=3, help="warm conversions (best of)")
    p.add_argument("--no-reference", action="store_true", help="time rvc-mlx only")
    p.add_argument("--reference-device", default="auto", help="torch device (auto, cpu, cuda, cuda:1)")
    p.add_argument("--machine", help="results folder name (default: OS-architecture-cores)")
    p.add_argument("--out", help="results folder (default: benchmarks/results/<machine>)")
    p.add_argument("--models-dir", help="keep (and reuse) the model files here")
    p.add_argument("--profile", choices=["full", "tiny"], default="full")
    p.add_argument("--precision", choices=PRECISIONS, default="float32", help="rvc-mlx's compute precision")
    p.add_argument("--warmup", action="store_true",
                   help="also time rvc_mlx.warmup.warm_up and the first call after it (another process)")
    p.add_argument("--warmup-seconds", type=float, nargs="+", help="warm-up lengths (default: 3 s, 46 s)")
    p.add_argument("--kernel-cache", choices=["shared", "fresh"], default="shared",
                   help="fresh: an empty MLX kernel cache per rvc-mlx process (a fresh machine's first call)")


def _add_infer(sub) -> None:
    p = sub.add_parser("infer", help="convert a recording (or a directory of them) into the model's voice")
    p.add_argument("-m", "--model", required=True, help="voice model: RVC .pth or rvc-mlx .safetensors")
    p.add_argument("-i", "--input", required=True, help="audio file or directory")
    p.add_argument("-o", "--output", required=True, help="output file, or directory for directory input")
    p.add_argument("--hubert", help="content encoder (default: hubert_base.pt in the models directory)")
    p.add_argument("--rmvpe", help="RMVPE weights (default: rmvpe.pt in the models directory)")
    p.add_argument("--index", help="retrieval index (.index); default: the one stored in the model, if any")
    p.add_argument("--index-mode", choices=["exact", "ivf", "faiss"], default="exact",
                   help="exact k-NN (default); 'ivf': faiss's IVF nprobe-1 search in MLX, the neighbours RVC "
                        "finds; 'faiss': the same through faiss-cpu")
    p.add_argument("--pitch-shift", type=float, default=0.0, help="transposition in semitones")
    p.add_argument("--f0-method", default="rmvpe",
                   choices=["rmvpe", "fcpe", "crepe", "crepe-tiny", "pm", "harvest"])
    p.add_argument("--f0-curve", help="pitch curve file: lines of 'time_s,f0_hz' (replaces estimated f0)")
    p.add_argument("--index-rate", type=float, default=0.75, help="share of retrieved features (0..1)")
    p.add_argument("--filter-radius", type=int, default=3, help="median filter for harvest when > 2")
    p.add_argument("--rms-mix-rate", type=float, default=0.25,
                   help="1 keeps the output's loudness envelope, 0 takes the input's")
    p.add_argument("--protect", type=float, default=0.33,
                   help="protect unvoiced consonants from retrieval (0.5 = off)")
    p.add_argument("--output-sample-rate", type=int, default=None, help="resample the output (Hz)")
    p.add_argument("--speaker-id", type=int, default=0)
    p.add_argument("--seed", type=int, default=None, help="seed for the model's noise draws")
    p.add_argument("--deterministic", action="store_true", help="zero every noise draw")
    p.add_argument("--format", choices=["PCM_16", "FLOAT"], default="PCM_16", help="output sample format")
    p.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="network precision (default float32, the reference's output); float16/bfloat16 "
                        "need a GPU back end (float16: ~1.6x faster on an H100); 'auto': float32 on the CPU, "
                        "float16 on a GPU")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rvc-mlx", description="RVC voice conversion on MLX")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_infer(sub)

    p = sub.add_parser("convert-checkpoint", help="convert a .pth/.pt model to one rvc-mlx .safetensors")
    p.add_argument("source", help="RVC voice .pth, hubert_base.pt or rmvpe.pt")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--index", help="RVC .index to store inside a converted voice")
    p.add_argument("--kind", choices=["auto", "voice", "hubert", "rmvpe"], default="auto")

    p = sub.add_parser("info", help="describe a voice model")
    p.add_argument("model")

    p = sub.add_parser("download", help="fetch hubert_base.pt and rmvpe.pt into the models directory")
    p.add_argument("names", nargs="*", help="which files (default: all)")
    p.add_argument("--force", action="store_true", help="download even if present and intact")

    p = sub.add_parser("doctor", help="check the install: back end, BLAS speed, a whole conversion")
    p.add_argument("--seconds", type=float, default=3.0, help="length of the generated test audio")

    p = sub.add_parser("bench", help="time rvc-mlx against the PyTorch reference, per stage (benchmarks/)")
    add_bench_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "infer":
            from rvc_mlx.commands import run_infer

            return run_infer(args)
        if args.command == "convert-checkpoint":
            from rvc_mlx.commands import run_convert

            return run_convert(args)
        if args.command == "info":
            from rvc_mlx.commands import run_info

            return run_info(args)
        if args.command == "download":
            from rvc_mlx.download import download

            for name, path in download(args.names or None, force=args.force).items():
                print(f"{name}: {path}")
            return 0
        if args.command == "doctor":
            from rvc_mlx.doctor import run_doctor

            return run_doctor(seconds=args.seconds)
        if args.command == "bench":
            from rvc_mlx.bench import run_from_args

            return run_from_args(args)
    except RVCError as e:
        print(f"rvc-mlx: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
