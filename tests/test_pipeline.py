"""The whole conversion pipeline against rvc 0.3.5's ``Pipeline.pipeline`` (+ ``vc_single``'s peak scaling).

Random-weight voice (.pth), HuBERT (fairseq hubert_base.pt layout) and RMVPE (rmvpe.pt) files are loaded by
our readers; the reference runs the same weights. Noise is zeroed on both sides (``deterministic=True``;
the reference's ``torch.randn_like`` patched to zeros). Tolerance: max|ours - ref| <= 2e-4 * max|ref| on
the 16-bit output (ours scaled as the reference scales before its int16 cast).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from rvc_mlx.checkpoints.hubert import load_hubert
from rvc_mlx.checkpoints.voice import load_voice
from rvc_mlx.index import FeatureIndex
from rvc_mlx.pipeline import ConversionOptions, Segmentation, VoiceConverter

ref_pipeline = pytest.importorskip("rvc.modules.vc.pipeline")
import reference_models as rm  # noqa: E402

TOL = 2e-4


def _speechy(seconds: float, seed: int = 0) -> np.ndarray:
    """16 kHz test signal: a gliding harmonic tone with pauses and a little noise (float32)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    f0 = 160 + 60 * np.sin(2 * np.pi * 0.6 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    tone = sum(np.sin(k * phase) / k for k in range(1, 7))
    gate = (np.sin(2 * np.pi * 0.9 * t) > -0.4).astype(np.float64)
    return (0.4 * tone * gate + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipeline")
    hubert_ref = rm.make_hubert(d / "hubert_base.pt")
    rm.make_rmvpe(d / "rmvpe.pt", voiced_logit=4.0)
    return {"dir": d, "hubert_ref": hubert_ref, "hubert": load_hubert(d / "hubert_base.pt")}


def _run_both(shared, monkeypatch, *, version, f0, sample_rate, seconds=2.5, f0_method="pm", index=None,
              index_rate=0.75, protect=0.33, rms_mix_rate=0.25, output_sample_rate=None, pitch_shift=0,
              segmentation=None, seed=0):
    segmentation = segmentation or Segmentation()
    d = shared["dir"]
    voice_path = d / f"voice-{version}-{f0}-{sample_rate}.pth"
    net_g, _ = rm.make_voice(voice_path, version, f0, sample_rate, seed=seed)
    index_path = None
    if index:
        index_path = rm.make_index(d / f"added_IVF16_Flat_nprobe_1_test_{version}.index",
                                   256 if version == "v1" else 768, seed=seed)
    audio = _speechy(seconds, seed)
    audio[100] = 1.3  # above the 0.95 input peak: exercises the input scaling

    # reference (vc_single's peak scaling, then Pipeline.pipeline)
    x = audio.copy()
    peak = np.abs(x).max() / 0.95
    if peak > 1:
        x /= peak
    seg = segmentation
    cfg = rm.reference_config(seg.pad_seconds, seg.query_seconds, seg.center_seconds, seg.max_seconds)
    monkeypatch.setenv("rmvpe_root", str(d))
    monkeypatch.setattr(torch, "randn_like", torch.zeros_like)
    pipe = ref_pipeline.Pipeline(sample_rate, cfg)
    ref = pipe.pipeline(shared["hubert_ref"], net_g, 0, x, "input.wav", {"npy": 0, "f0": 0, "infer": 0},
                        pitch_shift, f0_method, index_path, index_rate, f0, 3, sample_rate,
                        output_sample_rate or 0, rms_mix_rate, version, protect)
    monkeypatch.undo()

    # ours
    feature_index = FeatureIndex.load(index_path) if index_path else None
    converter = VoiceConverter(load_voice(voice_path), shared["hubert"], index=feature_index,
                               index_mode=index or "exact", rmvpe=str(d / "rmvpe.pt"),
                               segmentation=segmentation, rmvpe_padding="constant")
    options = ConversionOptions(pitch_shift=pitch_shift, f0_method=f0_method, index_rate=index_rate,
                                protect=protect, rms_mix_rate=rms_mix_rate,
                                output_sample_rate=output_sample_rate, deterministic=True)
    ours, rate = converter.convert_16k(audio, options)
    assert rate == (output_sample_rate or sample_rate)
    return ours, ref


def _check(ours, ref, label):
    ref = ref.astype(np.float64)
    ours = ours.astype(np.float64) * 32768
    assert ours.shape == ref.shape, (label, ours.shape, ref.shape)
    err = np.max(np.abs(ours - ref)) / np.max(np.abs(ref))
    print(f"{label}: max|ours-ref|/max|ref| = {err:.2e}")
    assert np.max(np.abs(ref)) > 1000, "reference output is (nearly) silent: the comparison would be vacuous"
    assert err <= TOL, (label, err)


@pytest.mark.parametrize("version,f0,sample_rate,f0_method,index,protect,rms,out_sr", [
    ("v2", 1, 40000, "pm", "ivf", 0.33, 0.25, None),
    ("v1", 1, 48000, "rmvpe", "faiss", 0.2, 0.5, 44100),
    ("v2", 0, 32000, "pm", None, 0.33, 1.0, None),
    ("v1", 0, 40000, "pm", "ivf", 0.5, 0.0, 16000),
    ("v2", 1, 32000, "harvest", None, 0.33, 0.25, None),
])
def test_pipeline_matches_reference(shared, monkeypatch, version, f0, sample_rate, f0_method, index, protect,
                                    rms, out_sr):
    ours, ref = _run_both(shared, monkeypatch, version=version, f0=f0, sample_rate=sample_rate,
                          f0_method=f0_method, index=index, protect=protect, rms_mix_rate=rms,
                          output_sample_rate=out_sr, pitch_shift=3 if f0 else 0)
    _check(ours, ref, f"{version} f0={f0} {sample_rate} {f0_method} index={index}")


def test_long_input_split_points_match_reference(shared, monkeypatch):
    seg = Segmentation(pad_seconds=1, query_seconds=1, center_seconds=3, max_seconds=4)
    ours, ref = _run_both(shared, monkeypatch, version="v2", f0=1, sample_rate=40000, seconds=9.5,
                          f0_method="pm", index="ivf", segmentation=seg)
    _check(ours, ref, "long input, 3 split points")


def test_rmvpe_pitch_reaches_the_synthesizer(shared):
    """The random RMVPE must call frames voiced with varying f0, else the rmvpe case would not test pitch
    (unvoiced frames and ``protect`` are covered by the pm cases, whose pauses are unvoiced)."""
    from rvc_mlx.pitch import estimate_f0

    f0 = estimate_f0(_speechy(2.5), 16000, model=str(shared["dir"] / "rmvpe.pt"), mel_padding="constant")
    assert np.mean(f0 > 0) > 0.5 and np.std(f0[f0 > 0]) > 1.0


def test_voice_and_encoder_widths_must_match(shared, tmp_path):
    from rvc_mlx.errors import RVCError

    path = tmp_path / "v1.pth"
    rm.make_voice(path, "v1", 1, 40000)
    v1 = load_voice(path)
    encoder_without_proj = load_hubert(shared["dir"] / "hubert_base.pt")
    object.__setattr__(encoder_without_proj, "config",
                       type(encoder_without_proj.config)(**{**encoder_without_proj.config.__dict__,
                                                            "final_proj_size": None}))
    with pytest.raises(RVCError, match="256-d content"):
        VoiceConverter(v1, encoder_without_proj)
    assert os.path.exists(path)


@pytest.mark.parametrize("method", ["rmvpe", "fcpe", "crepe", "crepe-tiny", "pm", "harvest"])
def test_every_f0_method_converts(shared, tmp_path, method):
    """Each pitch method runs through the pipeline (its own parity is tested in its module's tests)."""
    rm.make_voice(tmp_path / "v.pth", "v2", 1, 40000)
    converter = VoiceConverter(load_voice(tmp_path / "v.pth"), shared["hubert"],
                               rmvpe=str(shared["dir"] / "rmvpe.pt"))
    ours, rate = converter.convert_16k(_speechy(1.2), ConversionOptions(f0_method=method, seed=1))
    assert rate == 40000 and np.isfinite(ours).all() and abs(ours.shape[0] - 48000) < 1200


def test_python_api_from_files_and_arrays(shared, tmp_path):
    import soundfile as sf

    import rvc_mlx

    rm.make_voice(tmp_path / "v.pth", "v1", 1, 48000)
    index = rm.make_index(tmp_path / "v.index", 256)
    vc = rvc_mlx.VoiceConverter.load(tmp_path / "v.pth", hubert=shared["dir"] / "hubert_base.pt",
                                     rmvpe=str(shared["dir"] / "rmvpe.pt"), index=index)
    audio = _speechy(1.5)
    sf.write(tmp_path / "in.wav", audio, 16000, subtype="FLOAT")
    from_file, rate = vc.convert(str(tmp_path / "in.wav"), pitch_shift=-2, deterministic=True)
    from_array, rate2 = vc.convert(audio, 16000, pitch_shift=-2, deterministic=True)
    assert rate == rate2 == 48000
    np.testing.assert_allclose(from_file, from_array, atol=1e-6)
    resampled, rate3 = vc.convert(audio, 16000, output_sample_rate=22050, deterministic=True)
    assert rate3 == 22050 and abs(resampled.shape[0] - 1.5 * 22050) < 22050 * 0.03
    a, _ = vc.convert(audio, 16000, seed=7)
    b, _ = vc.convert(audio, 16000, seed=7)
    c, _ = vc.convert(audio, 16000, seed=8)
    np.testing.assert_array_equal(a, b)
    assert np.max(np.abs(a - c)) > 0  # the seed drives the noise draws
    from rvc_mlx.errors import AudioError, RVCError

    with pytest.raises(AudioError, match="silent"):
        vc.convert(np.zeros(16000, np.float32), 16000)
    with pytest.raises(AudioError, match="too short"):
        vc.convert(audio[:400], 16000)
    with pytest.raises(RVCError, match="needs its sample_rate"):
        vc.convert(audio)
    with pytest.raises(RVCError, match="f0_method"):
        vc.convert(audio, 16000, f0_method="yin")
