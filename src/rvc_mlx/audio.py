"""Audio files in and out: soundfile (libsndfile) for every format, soxr for resampling.

:func:`load_audio` reads WAV, FLAC, OGG (Vorbis/Opus) and, with libsndfile >= 1.1, MP3, at any sample rate
and channel count, as float32 in [-1, 1]: (T,) after downmixing to mono (the mean of the channels), or
(T, C) channels-last. Given ``sample_rate`` it resamples with soxr at its "VHQ" quality.

:func:`save_audio` picks the container from the extension and writes 16-bit PCM unless asked otherwise
(``subtype="FLOAT"`` for 32-bit float WAV). Float samples beyond [-1, 1] are clipped by libsndfile when
written as integers. The file is written to a temporary name in the destination directory and moved into
place with ``os.replace``, so a failure never leaves a partial file nor touches an existing one.
:func:`check_output_path` refuses an output that is the input file itself.

Every problem with a file raises :class:`~rvc_mlx.errors.AudioError` naming it.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import soundfile as sf
import soxr

from rvc_mlx.errors import AudioError

RESAMPLE_QUALITY = "VHQ"  # soxr's very-high-quality preset, for decoding inputs
OUTPUT_RESAMPLE_QUALITY = "HQ"  # soxr's high-quality preset: what librosa.resample (RVC's) uses
DEFAULT_SUBTYPE = "PCM_16"  # what save_audio writes to WAV/FLAC unless told otherwise

# extension -> (libsndfile container, default subtype)
_FORMATS = {
    ".wav": ("WAV", DEFAULT_SUBTYPE),
    ".flac": ("FLAC", DEFAULT_SUBTYPE),
    ".ogg": ("OGG", "VORBIS"),
    ".mp3": ("MP3", "MPEG_LAYER_III"),
}


def resample(audio: np.ndarray, orig_rate: int, target_rate: int,
             quality: str = OUTPUT_RESAMPLE_QUALITY) -> np.ndarray:
    """Resample mono (T,) or channels-last (T, C) float audio with soxr; float32 out."""
    if int(orig_rate) == int(target_rate):
        return np.asarray(audio, dtype=np.float32)
    audio = np.asarray(audio, dtype=np.float32)
    out = soxr.resample(audio, int(orig_rate), int(target_rate), quality=quality)
    return np.ascontiguousarray(out, dtype=np.float32)


def mp3_supported() -> bool:
    """Whether the libsndfile that soundfile loaded reads and writes MP3 (libsndfile >= 1.1)."""
    return "MP3" in sf.available_formats()


def _same_file(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)  # also catches hard links
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def check_output_path(input_path: str | os.PathLike, output_path: str | os.PathLike) -> None:
    """Raise AudioError if writing ``output_path`` would overwrite ``input_path`` (same file once links and
    relative parts are resolved)."""
    if _same_file(os.fspath(input_path), os.fspath(output_path)):
        raise AudioError(output_path, f"refusing to overwrite the input file {os.fspath(input_path)!r}; "
                                      "choose another output path")


def load_audio(path: str | os.PathLike, sample_rate: int | None = None,
               mono: bool = True) -> tuple[np.ndarray, int]:
    """Read an audio file.

    Returns ``(audio, sample_rate)``: float32 (T,) when ``mono`` (mean of the channels), else (T, C); at
    ``sample_rate`` Hz when given (soxr VHQ), else at the file's rate.
    """
    path = os.fspath(path)
    if sample_rate is not None and (int(sample_rate) != sample_rate or sample_rate <= 0):
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    if not os.path.exists(path):
        raise AudioError(path, "no such file")
    if not os.path.isfile(path):
        raise AudioError(path, "not a regular file")
    if os.path.getsize(path) == 0:
        raise AudioError(path, "the file is empty")
    if os.path.splitext(path)[1].lower() == ".mp3" and not mp3_supported():
        raise AudioError(path, f"this libsndfile ({sf.__libsndfile_version__}) cannot read MP3 (needs "
                               ">= 1.1); convert it to WAV or FLAC first, e.g. ffmpeg -i in.mp3 in.wav")
    try:
        audio, file_rate = sf.read(path, dtype="float32", always_2d=True)  # (T, C)
    except (sf.SoundFileError, RuntimeError, OSError) as e:
        raise AudioError(path, f"cannot read audio: {e}") from e
    if audio.shape[0] == 0 or audio.shape[1] == 0:
        raise AudioError(path, "the file holds no samples")
    if not np.isfinite(audio).all():
        raise AudioError(path, "the audio contains NaN or infinite samples")
    if mono:
        audio = audio.mean(axis=1, dtype=np.float32)  # (T,)
    if sample_rate is not None and int(sample_rate) != file_rate:
        audio = resample(audio, file_rate, int(sample_rate), quality=RESAMPLE_QUALITY)
        file_rate = int(sample_rate)
        if audio.shape[0] == 0:
            raise AudioError(path, f"too short to resample to {file_rate} Hz")
    return np.ascontiguousarray(audio, dtype=np.float32), int(file_rate)


def _format_for(path: str, subtype: str | None) -> tuple[str, str]:
    ext = os.path.splitext(path)[1].lower()
    if ext not in _FORMATS:
        raise AudioError(path, f"cannot tell the audio format from the extension {ext!r}; use one of "
                               f"{', '.join(_FORMATS)}")
    fmt, default = _FORMATS[ext]
    if fmt == "MP3" and not mp3_supported():
        raise AudioError(path, f"this libsndfile ({sf.__libsndfile_version__}) cannot write MP3; "
                               "save as .wav or .flac")
    subtype = default if subtype is None else subtype.upper()
    if not sf.check_format(fmt, subtype):
        raise AudioError(path, f"{fmt} files cannot hold {subtype} samples; supported: "
                               f"{', '.join(sf.available_subtypes(fmt))}")
    return fmt, subtype


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_audio(path: str | os.PathLike, audio, sample_rate: int, *, subtype: str | None = None,
               protect: str | os.PathLike | None = None) -> None:
    """Write ``audio`` (T,) or (T, C) float/int array at ``sample_rate`` Hz, atomically.

    The format comes from the extension (.wav, .flac, .ogg, .mp3); ``subtype`` is a libsndfile subtype
    (default 16-bit PCM; "FLOAT" for float WAV). ``protect``: an input path that must not be overwritten.
    """
    path = os.fspath(path)
    if protect is not None:
        check_output_path(protect, path)
    fmt, subtype = _format_for(path, subtype)
    audio = np.asarray(audio)
    if audio.ndim not in (1, 2) or audio.shape[0] == 0 or (audio.ndim == 2 and audio.shape[1] == 0):
        raise AudioError(path, f"audio to save must be a non-empty (T,) or (T, C) array, got {audio.shape}")
    if audio.dtype.kind == "f":
        audio = audio.astype(np.float32, copy=False)
        if not np.isfinite(audio).all():
            raise AudioError(path, "refusing to save NaN or infinite samples")
    elif audio.dtype not in (np.int16, np.int32):
        raise AudioError(path, f"audio to save must be float, int16 or int32, got {audio.dtype}")
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise AudioError(path, f"bad sample rate {sample_rate!r}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise AudioError(path, "the output directory does not exist")
    if os.path.isdir(path):
        raise AudioError(path, "the output path is a directory")
    channels = 1 if audio.ndim == 1 else audio.shape[1]
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".part")
    try:
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # the mode a plain open() would give, not mkstemp's 0600
        with sf.SoundFile(tmp, "w", samplerate=int(sample_rate), channels=channels, format=fmt,
                          subtype=subtype) as f:
            f.write(audio)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(e, (sf.SoundFileError, RuntimeError, OSError)):
            raise AudioError(path, f"cannot write audio: {e}") from e
        raise
