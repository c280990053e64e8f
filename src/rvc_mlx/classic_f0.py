"""The classic pitch trackers RVC offers, called exactly as rvc 0.3.5 `Pipeline.get_f0` calls them.

* "pm": Praat's autocorrelation pitch (praat-parselmouth ``Sound.to_pitch_ac``), 10 ms steps, voicing
  threshold 0.6, zero-padded (about evenly on both sides) to the frame count the pipeline asks for;
* "harvest": WORLD's Harvest (pyworld) with 10 ms frames, refined by StoneMask, then a 3-point median
  filter when ``filter_radius > 2``.

Both libraries are optional (``pip install rvc-mlx[pitch]``); without them these functions raise RVCError.
Results keep the libraries' float64, exactly the values the reference pipeline gets (its coarse pitch is
rounded from them).
"""

from __future__ import annotations

import importlib
import warnings

import numpy as np

from rvc_mlx.errors import AudioError, RVCError
from rvc_mlx.pitch import F0_MAX_HZ as F0_MAX
from rvc_mlx.pitch import F0_MIN_HZ as F0_MIN
from rvc_mlx.pitch import PITCH_HOP_LENGTH as HOP_LENGTH
from rvc_mlx.pitch import PITCH_SAMPLE_RATE as SAMPLE_RATE

PM_VOICING_THRESHOLD = 0.6  # Praat voicing threshold rvc uses
MEDIAN_FILTER_RADIUS = 2  # harvest's f0 is median-filtered (3 points) only when filter_radius exceeds this

_INSTALL_HINT = "pip install rvc-mlx[pitch]"


def _require(module: str, package: str, method: str):
    try:
        with warnings.catch_warnings():  # pyworld imports the deprecated pkg_resources
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            return importlib.import_module(module)
    except ImportError as e:
        raise RVCError(f"the {method!r} pitch method needs {package}: {_INSTALL_HINT}") from e


def _checked_audio(audio_16k, method: str) -> np.ndarray:
    audio = np.asarray(audio_16k)
    if audio.ndim != 1 or audio.size == 0:
        raise AudioError(None, f"{method}: need non-empty mono audio of shape (samples,), got {audio.shape}")
    if not np.issubdtype(audio.dtype, np.number) or not np.all(np.isfinite(audio)):
        raise AudioError(None, f"{method}: audio has non-finite or non-numeric samples")
    return audio


def pm_f0(audio_16k: np.ndarray, *, frames: int | None = None, hop_length: int = HOP_LENGTH,
          f0_min: float = F0_MIN, f0_max: float = F0_MAX) -> np.ndarray:
    """Praat pitch (Hz, 0 = unvoiced) of audio (S,) at 16 kHz: (max(frames, Praat's count),) float64.

    `frames` is the pipeline's ``p_len`` (default S // hop_length): Praat's shorter track of n frames is
    zero-padded to it, ``(frames - n + 1) // 2`` frames in front, as rvc does; a longer one is kept as is.
    """
    audio = _checked_audio(audio_16k, "pm")
    parselmouth = _require("parselmouth", "praat-parselmouth", "pm")
    frames = len(audio) // hop_length if frames is None else int(frames)
    time_step_ms = hop_length / SAMPLE_RATE * 1000  # the same float expression as the reference
    f0 = (
        parselmouth.Sound(audio, SAMPLE_RATE)
        .to_pitch_ac(time_step=time_step_ms / 1000, voicing_threshold=PM_VOICING_THRESHOLD,
                     pitch_floor=f0_min, pitch_ceiling=f0_max)
        .selected_array["frequency"]
    )
    front = (frames - len(f0) + 1) // 2
    back = frames - len(f0) - front
    if front > 0 or back > 0:
        f0 = np.pad(f0, [[front, back]], mode="constant")
    return f0


def harvest_f0(audio_16k: np.ndarray, *, filter_radius: int = 3, frame_period_ms: float = 10.0,
               f0_min: float = F0_MIN, f0_max: float = F0_MAX) -> np.ndarray:
    """Harvest + StoneMask pitch (Hz, 0 = unvoiced) of audio (S,) at 16 kHz: one frame per
    `frame_period_ms` (1 + S // 160 at 10 ms), float64; 3-point median filter if filter_radius > 2.
    """
    audio = _checked_audio(audio_16k, "harvest").astype(np.double)
    pyworld = _require("pyworld", "pyworld", "harvest")
    f0, times = pyworld.harvest(audio, fs=SAMPLE_RATE, f0_ceil=f0_max, f0_floor=f0_min,
                                frame_period=frame_period_ms)
    f0 = pyworld.stonemask(audio, f0, times, SAMPLE_RATE)
    if filter_radius > MEDIAN_FILTER_RADIUS:
        from scipy import signal

        f0 = signal.medfilt(f0, 3)
    return f0


def _register() -> None:
    from rvc_mlx.pitch import PitchMethod, register_method

    # rvc passes these the float64 signal: keep it float64 for bit-equal results
    register_method(PitchMethod("pm", lambda audio, model, **kw: pm_f0(audio, **kw), keeps_float64=True))
    register_method(PitchMethod("harvest", lambda audio, model, **kw: harvest_f0(audio, **kw),
                                keeps_float64=True))


_register()
