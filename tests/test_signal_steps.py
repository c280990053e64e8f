"""The pipeline's signal steps against the reference pipeline's own code (rvc 0.3.5)."""

from __future__ import annotations

import types

import numpy as np
import pytest

from rvc_mlx import signal_steps as steps

ref_pipeline = pytest.importorskip("rvc.modules.vc.pipeline")


def _config(x_pad=1, x_query=6, x_center=38, x_max=41):
    return types.SimpleNamespace(x_pad=x_pad, x_query=x_query, x_center=x_center, x_max=x_max,
                                 is_half=False, device="cpu")


def _speechy(seconds: float, rng: np.random.Generator, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.7 * t)
    tone = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / sr) / k for k in range(1, 6))
    gate = (np.sin(2 * np.pi * 1.3 * t) > -0.3).astype(np.float64)  # pauses where a split can land
    return (0.3 * tone * gate + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)


def test_high_pass_is_the_reference_filter(rng):
    x = _speechy(1.0, rng)
    from scipy import signal

    np.testing.assert_array_equal(steps.high_pass(x), signal.filtfilt(ref_pipeline.bh, ref_pipeline.ah, x))


@pytest.mark.parametrize("rate", [0.0, 0.25, 0.6])
@pytest.mark.parametrize("out_sr", [40000, 48000])
def test_mix_rms_matches_reference(rng, rate, out_sr):
    src = steps.high_pass(_speechy(2.3, rng))  # float64, as the reference passes it
    out = (rng.standard_normal(int(2.3 * out_sr)) * 0.2).astype(np.float32)
    ref = ref_pipeline.change_rms(src, 16000, out.copy(), out_sr, rate)
    ours = steps.mix_rms(src, 16000, out, out_sr, rate)
    assert np.max(np.abs(ours - ref)) <= 1e-5 * np.max(np.abs(ref))


def test_coarse_pitch_and_f0_curve_match_reference(rng):
    x = _speechy(1.5, rng).astype(np.float64)
    pipe = ref_pipeline.Pipeline(40000, _config())
    p_len = x.shape[0] // 160
    coarse, f0 = pipe.get_f0("in.wav", x, p_len, 3, "pm", 3)
    assert (f0 > 0).any() and (f0 == 0).any()
    np.testing.assert_array_equal(steps.coarse_pitch(f0.copy()), coarse)

    curve = np.stack([np.linspace(0.0, 0.8, 17), np.linspace(180.0, 260.0, 17)], axis=1).astype(np.float32)
    coarse_c, f0_c = pipe.get_f0("in.wav", x, p_len, 3, "pm", 3, inp_f0=curve)
    ours = steps.apply_f0_curve(f0, curve, pad_frames=1 * 100)
    np.testing.assert_array_equal(ours, f0_c)
    np.testing.assert_array_equal(steps.coarse_pitch(ours.copy()), coarse_c)


def test_split_points_match_reference_chunks(rng, monkeypatch):
    # Shrunk segmentation (seconds): x_pad 1, query 1, center 3, max 4 on a 10 s input -> 3 splits.
    x = steps.high_pass(_speechy(10.0, rng))
    cfg = _config(x_pad=1, x_query=1, x_center=3, x_max=4)
    pipe = ref_pipeline.Pipeline(16000, cfg)
    chunks = []

    def fake_vc(self, model, net_g, sid, audio0, *args):
        chunks.append(audio0.shape[0])
        return np.zeros(audio0.shape[0], dtype=np.float32)

    monkeypatch.setattr(ref_pipeline.Pipeline, "vc", fake_vc)
    pipe.pipeline(None, None, 0, x.copy(), "in.wav", {"f0": 0}, 0, "pm", None, 0.0, 0, 3,
                  16000, 16000, 1.0, "v2", 0.33)
    ours = steps.split_points(x, query=16000, center=3 * 16000, limit=4 * 16000)
    assert len(ours) == 3
    # The reference's chunk s..t+2*pad+hop, with t floored to the hop, then the rest from the last t.
    bounds = [t // 160 * 160 for t in ours]
    pad2 = 2 * 16000
    expected, s = [], 0
    for t in bounds:
        expected.append(t + pad2 + 160 - s)
        s = t
    expected.append(x.shape[0] + pad2 - s)
    assert chunks == expected


def test_short_input_is_not_split(rng):
    x = steps.high_pass(_speechy(2.0, rng))
    assert steps.split_points(x, query=16000, center=3 * 16000, limit=4 * 16000) == []


def test_peak_limits():
    loud = np.array([0.0, 2.0, -1.0], dtype=np.float32)
    assert np.isclose(np.abs(steps.limit_input_peak(loud)).max(), 0.95)
    assert np.isclose(np.abs(steps.limit_output_peak(loud)).max(), 0.99)
    quiet = np.array([0.1, -0.2], dtype=np.float32)
    np.testing.assert_array_equal(steps.limit_input_peak(quiet), quiet)
