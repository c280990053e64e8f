"""pm (Praat) and harvest (WORLD) pitch vs rvc 0.3.5 `Pipeline.get_f0` itself, and their accuracy.

Parity: the f0 get_f0 returns (f0_up_key 0) must be equal, value for value, on the float64 signal the
pipeline hands it (the high-passed, reflect-padded audio). Accuracy on synthetic audio of known pitch
(tests/pitch_signals.py, 20 dB SNR): floors a few points under the figures measured on this signal.
"""

from __future__ import annotations

import os
import sys
import types

import rvc_mlx  # noqa: F401  (loads OpenBLAS before mlx.core)

# isort: split
import numpy as np
import pytest
import soundfile as sf
from pitch_signals import make_signal, scores

from rvc_mlx.classic_f0 import harvest_f0, pm_f0
from rvc_mlx.errors import AudioError, RVCError

pytest.importorskip("parselmouth")
pytest.importorskip("pyworld")
pipeline = pytest.importorskip("rvc.modules.vc.pipeline")

HOP = 160
SPEECH = os.path.join(os.path.dirname(__file__), "data", "speech_16k.wav")
_calls = iter(range(10**6))  # get_f0 caches harvest by input path: give every call its own


@pytest.fixture(scope="module")
def signal():
    return make_signal()


@pytest.fixture(scope="module")
def audios(signal) -> list[np.ndarray]:
    """Inputs as the pipeline builds them: float64, high-passed, reflect-padded by 1 s (x_pad) each side."""
    speech, sr = sf.read(SPEECH, dtype="float32")
    assert sr == 16000
    out = []
    for x in (speech, signal.audio[: 2 * sr]):
        x = pipeline.signal.filtfilt(pipeline.bh, pipeline.ah, x)
        out.append(np.pad(x, (sr, sr), mode="reflect"))
    return out


def _reference(x: np.ndarray, method: str, filter_radius: int = 3, p_len: int | None = None) -> np.ndarray:
    config = types.SimpleNamespace(x_pad=1, x_query=6, x_center=38, x_max=41, is_half=False, device="cpu")
    ref = pipeline.Pipeline(40000, config)
    p_len = len(x) // HOP if p_len is None else p_len
    _, f0 = ref.get_f0(f"input-{next(_calls)}.wav", x, p_len, 0, method, filter_radius)
    return f0


def test_pm_equals_reference(audios):
    for x in audios:
        ref = _reference(x, "pm")
        ours = pm_f0(x)
        assert ours.dtype == ref.dtype and len(ours) == len(x) // HOP
        np.testing.assert_array_equal(ours, ref)
    x = audios[0]
    for frames in (len(x) // HOP + 7, len(x) // HOP - 9):  # other frame counts pad (or keep) differently
        np.testing.assert_array_equal(pm_f0(x, frames=frames), _reference(x, "pm", p_len=frames))


@pytest.mark.parametrize("filter_radius", [3, 2])
def test_harvest_equals_reference(audios, filter_radius):
    x = audios[1]
    ref = _reference(x, "harvest", filter_radius)
    ours = harvest_f0(x, filter_radius=filter_radius)
    assert ours.dtype == ref.dtype and len(ours) == 1 + len(x) // HOP
    np.testing.assert_array_equal(ours, ref)


# Measured on STANDARD_SEGMENTS at 20 dB SNR: pm RPA 0.993 / recall 0.993 / precision 1.000,
# harvest 1.000 / 1.000 / 0.935.
FLOORS = {"pm": (0.97, 0.97, 0.97), "harvest": (0.97, 0.97, 0.92)}  # (RPA, recall, precision)


@pytest.mark.parametrize("method", ["pm", "harvest"])
def test_accuracy(method, signal):
    f0 = pm_f0(signal.audio) if method == "pm" else harvest_f0(signal.audio)
    s = scores(f0, signal)
    print(f"{method}: RPA {s['rpa']:.4f}, voicing recall {s['recall']:.4f}, precision {s['precision']:.4f}")
    rpa, recall, precision = FLOORS[method]
    assert s["rpa"] >= rpa and s["recall"] >= recall and s["precision"] >= precision


@pytest.mark.parametrize("module,fn", [("parselmouth", pm_f0), ("pyworld", harvest_f0)])
def test_missing_dependency(monkeypatch, module, fn):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(RVCError, match=r"pip install rvc-mlx\[pitch\]"):
        fn(np.zeros(1600, np.float32))


@pytest.mark.parametrize("fn", [pm_f0, harvest_f0])
def test_bad_audio(fn):
    for audio in (np.zeros(0), np.zeros((2, 800)), np.array([0.0, np.inf])):
        with pytest.raises(AudioError):
            fn(audio)
