"""What the CLI's subcommands do (kept out of cli.py, which only parses)."""

from __future__ import annotations

import os
import sys

from rvc_mlx.errors import CheckpointError, RVCError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")


def _options_from_args(args):
    from rvc_mlx.pipeline import ConversionOptions
    from rvc_mlx.signal_steps import read_f0_curve

    curve = None
    if args.f0_curve:
        try:
            curve = read_f0_curve(args.f0_curve)
        except (OSError, ValueError) as e:
            raise RVCError(f"{args.f0_curve}: cannot read the pitch curve ({e})") from e
    return ConversionOptions(
        pitch_shift=args.pitch_shift, f0_method=args.f0_method, index_rate=args.index_rate,
        filter_radius=args.filter_radius, rms_mix_rate=args.rms_mix_rate, protect=args.protect,
        output_sample_rate=args.output_sample_rate, speaker_id=args.speaker_id, seed=args.seed,
        deterministic=args.deterministic, f0_curve=curve,
    )


def _jobs(src: str, dst: str) -> list[tuple[str, str]]:
    """(input, output) pairs: one file, or every audio file of a directory into an output directory."""
    if os.path.isdir(src):
        if os.path.isfile(dst):
            raise RVCError(f"{dst}: the input is a directory, so the output must be a directory")
        names = sorted(n for n in os.listdir(src) if n.lower().endswith(AUDIO_EXTENSIONS))
        if not names:
            raise RVCError(f"{src}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in this directory")
        os.makedirs(dst, exist_ok=True)
        return [(os.path.join(src, n), os.path.join(dst, os.path.splitext(n)[0] + ".wav")) for n in names]
    if not os.path.exists(src):
        raise RVCError(f"{src}: no such file")
    if os.path.isdir(dst):
        dst = os.path.join(dst, os.path.splitext(os.path.basename(src))[0] + ".wav")
    return [(src, dst)]


def run_infer(args) -> int:
    from tqdm import tqdm

    from rvc_mlx.audio import check_output_path, save_audio
    from rvc_mlx.pipeline import VoiceConverter

    jobs = _jobs(args.input, args.output)
    for src, dst in jobs:
        check_output_path(src, dst)
    options = _options_from_args(args)
    converter = VoiceConverter.load(args.model, hubert=args.hubert, rmvpe=args.rmvpe, index=args.index,
                                    index_mode=args.index_mode, precision=args.precision)
    failures: list[tuple[str, str]] = []
    show_bar = len(jobs) > 1 and sys.stderr.isatty()
    for src, dst in tqdm(jobs, desc="converting", unit="file", disable=not show_bar):
        try:
            audio, rate = converter.convert_file(src, options, progress=len(jobs) == 1)
            save_audio(dst, audio, rate, subtype=args.format)
        except RVCError as e:
            failures.append((src, str(e)))
            if len(jobs) == 1:
                raise
            continue
        if len(jobs) == 1 or not show_bar:
            print(f"{src} -> {dst}")
    if failures:
        print(f"rvc-mlx: {len(failures)} of {len(jobs)} files failed:", file=sys.stderr)
        for src, why in failures:
            print(f"  {src}: {why}", file=sys.stderr)
        return 1
    return 0


def _detect_kind(path: str) -> str:
    from rvc_mlx.checkpoints import native, torch_pickle

    if native.is_native(path):
        raise RVCError(f"{path}: already an rvc-mlx file")
    obj = torch_pickle.load(path)
    if isinstance(obj, dict) and "weight" in obj and "config" in obj:
        return "voice"
    if isinstance(obj, dict) and "model" in obj and any("pos_conv" in k for k in obj["model"]):
        return "hubert"
    if isinstance(obj, dict) and any(str(k).startswith("unet.") for k in obj):
        return "rmvpe"
    raise CheckpointError(path, "not an RVC voice, HuBERT or RMVPE checkpoint (give --kind)")


def run_convert(args) -> int:
    kind = _detect_kind(args.source) if args.kind == "auto" else args.kind
    if os.path.abspath(args.source) == os.path.abspath(args.output):
        raise RVCError(f"{args.output}: the output would overwrite the input")
    if kind == "voice":
        from rvc_mlx.checkpoints.voice import convert_voice

        convert_voice(args.source, args.output, index=args.index)
    elif args.index:
        raise RVCError("--index only goes with a voice model")
    elif kind == "hubert":
        from rvc_mlx.checkpoints.hubert import convert_hubert

        convert_hubert(args.source, args.output)
    else:
        from rvc_mlx.checkpoints.rmvpe import convert_rmvpe

        convert_rmvpe(args.source, args.output)
    print(f"{args.source} -> {args.output} ({kind})")
    return 0


def run_info(args) -> int:
    from rvc_mlx.checkpoints.voice import voice_info

    for key, value in voice_info(args.model).items():
        print(f"{key}: {value}")
    return 0
