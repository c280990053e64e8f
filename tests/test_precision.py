"""Half precision (float16, bfloat16): refused on the CPU device; with the CPU override (RVC_MLX_CPU_HALF=1),
the dtypes it is designed to keep and its distance from the PyTorch reference (float32).

Measured on this CPU (MLX 0.32.4), asserted with a margin (floors below):
* synthesizer vs rvc 0.3.5's (v2 40 kHz, reduced widths, 60 frames): SNR float16 55.1 dB, bfloat16 35.2 dB;
* RMVPE vs rvc 0.3.5's (shallow E2E, 2.8 s of speech, about half the frames voiced): salience max abs error
  float16 1.5e-4, bfloat16 8.1e-4; voicing agreement 100% / 98.9%; median cents 0.01 / 0.20 (bfloat16's mean
  is 25 cents: a few frames of random weights' flat salience move to another peak);
* whole conversion (pm f0, 1 s of speech, the layers' plain-MLX path as on a GPU) vs our float32 conversion
  (which tests/test_pipeline.py holds to the reference within 2e-4): SNR float16 57.2 dB, bfloat16 37.9 dB.
"""

from __future__ import annotations

import rvc_mlx  # noqa: F401  (loads OpenBLAS before mlx.core)

# isort: split
import mlx.core as mx
import numpy as np
import pytest
import reference_models as rm
import soundfile as sf
import torch
from mlx.utils import tree_flatten
from test_rmvpe import SPEECH, _reference_e2e
from test_synthesizer import make_inputs, run_reference

from rvc_mlx.checkpoints import rmvpe as rmvpe_ckpt
from rvc_mlx.checkpoints.hubert import load_hubert
from rvc_mlx.checkpoints.voice import load_voice
from rvc_mlx.errors import RVCError
from rvc_mlx.models import rmvpe as rmvpe_model
from rvc_mlx.models.conv import conv_impl
from rvc_mlx.pipeline import ConversionOptions, VoiceConverter
from rvc_mlx.precision import CPU_HALF_ENV, cast_model, parameter_dtypes, resolve_precision

HALF = {"float16": mx.float16, "bfloat16": mx.bfloat16}
SYNTH_SNR_FLOOR = {"float16": 48.0, "bfloat16": 30.0}  # dB, vs the reference synthesizer
PIPELINE_SNR_FLOOR = {"float16": 48.0, "bfloat16": 30.0}  # dB, vs our float32 conversion
# vs the reference: (salience max abs error, voicing agreement, median cents on frames voiced in both)
RMVPE_FLOOR = {"float16": (1e-3, 0.99, 0.5), "bfloat16": (5e-3, 0.97, 2.0)}


def snr_db(out, ref) -> float:
    out, ref = np.asarray(out, np.float64).reshape(-1), np.asarray(ref, np.float64).reshape(-1)
    return float(10 * np.log10(np.sum(ref**2) / np.sum((out - ref) ** 2)))


@pytest.fixture
def cpu_half(monkeypatch):
    monkeypatch.setenv(CPU_HALF_ENV, "1")


def test_cpu_device_refuses_half_precision(monkeypatch, tmp_path):
    monkeypatch.delenv(CPU_HALF_ENV, raising=False)
    assert mx.default_device() == mx.cpu
    for precision in ("float16", "bfloat16"):
        with pytest.raises(RVCError, match="needs a GPU back end"):
            resolve_precision(precision)
        with pytest.raises(RVCError, match="needs a GPU back end"):  # before the (missing) file is read
            VoiceConverter.load(tmp_path / "missing.pth", precision=precision)
    assert resolve_precision("auto") == "float32"
    assert resolve_precision("float32") == "float32"
    with pytest.raises(RVCError, match="precision must be one of"):
        resolve_precision("fp16")
    monkeypatch.setenv(CPU_HALF_ENV, "1")
    assert resolve_precision("bfloat16") == "bfloat16"
    assert resolve_precision("auto") == "float32"  # the override never changes the default


def test_cli_precision_flag(monkeypatch, tmp_path, capsys):
    from rvc_mlx.cli import build_parser, main

    monkeypatch.delenv(CPU_HALF_ENV, raising=False)
    assert build_parser().parse_args(["infer", "-m", "m", "-i", "i", "-o", "o"]).precision == "float32"
    code = main(["infer", "-m", str(tmp_path / "missing.pth"), "-i", str(SPEECH), "-o",
                 str(tmp_path / "out.wav"), "--precision", "float16"])
    assert code == 2
    assert "needs a GPU back end" in capsys.readouterr().err


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_half_synthesizer_against_reference(tmp_path, monkeypatch, cpu_half, precision):
    ref, config = rm.make_voice(tmp_path / "voice.pth", "v2", 1, 40000)
    frames = 60
    content, pitch, f0, noise, sine_noise = make_inputs(config, "v2", frames)
    lengths = np.array([frames])
    speakers = np.zeros(1, np.int64)
    want = run_reference(ref, 1, content, lengths, pitch, f0, speakers, noise, sine_noise, monkeypatch)[0]

    voice = cast_model(load_voice(tmp_path / "voice.pth"), precision)
    dtype = HALF[precision]
    assert voice.dtype == dtype and voice.enc_p.emb_phone.weight.dtype == dtype
    assert voice.dec.resblocks[0].convs1[0].weight.dtype == dtype
    assert voice.flow.flows[0].pre.weight.dtype == dtype
    assert voice.dec.m_source.l_linear.weight.dtype == mx.float32  # kept: the NSF source and the waveform
    assert voice.dec.conv_post.weight.dtype == mx.float32
    counts = parameter_dtypes(voice)
    assert counts[precision] > 100 * counts["float32"]
    got = voice.synthesize(content, lengths, pitch, f0, speakers, noise=mx.array(noise),
                           sine_noise=mx.array(sine_noise), rand_phase=mx.zeros((1, 1)))
    assert got.audio.dtype == mx.float32  # the waveform leaves in float32
    assert got.z.dtype == dtype and got.m_p.dtype == dtype  # the network ran in half (nothing promoted)
    snr = snr_db(got.audio, want)
    print(f"synthesizer {precision}: SNR {snr:.1f} dB vs the reference")
    assert snr >= SYNTH_SNR_FLOOR[precision]


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_half_rmvpe_f0_against_reference(tmp_path, cpu_half, precision):
    from rvc.lib import rmvpe as ref_mod

    from rvc_mlx.pitch import estimate_f0

    shallow = dict(n_blocks=1, inter_layers=1, en_out_channels=8)  # RMVPE's structure, fewer/narrower stages
    e2e = _reference_e2e(seed=3, **shallow)
    audio, _ = sf.read(SPEECH, dtype="float32")
    ref = ref_mod.RMVPE.__new__(ref_mod.RMVPE)  # its __init__ builds the full size: the same fields by hand
    ref.is_half, ref.device, ref.model = False, "cpu", e2e
    ref.mel_extractor = ref_mod.MelSpectrogram(False, 128, 16000, 1024, 160, None, 30, 8000)
    ref.cents_mapping = np.pad(20 * np.arange(360) + 1997.3794084376191, (4, 4))
    with torch.no_grad():
        mel = ref.mel_extractor(torch.from_numpy(audio)[None], center=True)
        # Random weights: shift the salience head's bias so the 0.03 threshold falls in the widest gap between
        # frames' best logits near their median (about half the frames voiced, none on the threshold).
        best = np.sort(np.log(1 / ref.mel2hidden(mel)[0].numpy().max(axis=1) - 1) * -1)
        mid = slice(int(0.4 * best.size), int(0.6 * best.size))
        k = int(np.argmax(np.diff(best)[mid])) + mid.start
        e2e.fc[1].bias.add_(float(np.log(0.03 / 0.97)) - 0.5 * (best[k] + best[k + 1]))
        hidden = ref.mel2hidden(mel)[0].numpy()
    want = ref.decode(hidden, thred=0.03)  # = ref.infer_from_audio(audio, thred=0.03)
    path = tmp_path / "rmvpe.pt"
    torch.save(e2e.state_dict(), path)

    model = cast_model(rmvpe_ckpt.load_rmvpe(path), precision)
    assert model.fc.weight.dtype == HALF[precision] and model.gru.w_hh.dtype == HALF[precision]
    assert model.unet.input_scale.dtype == mx.float32  # the log-mel's batch norm stays float32
    got = estimate_f0(audio, 16000, method="rmvpe", model=model, mel_padding="constant")
    salience = rmvpe_model.salience_from_audio(model, audio, mel_padding="constant")
    assert salience.dtype == np.float32
    salience_err = float(np.abs(salience - hidden).max())
    assert got.dtype == np.float64 and got.shape == want.shape
    voiced, voiced_ref = got > 0, want > 0
    both = voiced & voiced_ref
    agreement = float(np.mean(voiced == voiced_ref))
    cents = 1200 * np.abs(np.log2(got[both] / want[both]))
    print(f"RMVPE {precision}: salience max error {salience_err:.2e}, voicing agreement {agreement:.4f} "
          f"({voiced_ref.mean():.2f} voiced), cents median {np.median(cents):.2f} mean {cents.mean():.2f} "
          f"max {cents.max():.1f}")
    assert 0.2 < voiced_ref.mean() < 0.9 and both.sum() > 50  # the comparison sees both kinds of frame
    max_salience_err, min_agreement, max_median_cents = RMVPE_FLOOR[precision]
    assert salience_err <= max_salience_err and agreement >= min_agreement
    assert np.median(cents) <= max_median_cents


@pytest.fixture(scope="module")
def small_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("precision")
    rm.make_hubert(d / "hubert_base.pt")
    rm.make_voice(d / "voice.pth", "v2", 1, 40000)
    return d


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_half_conversion_close_to_float32(small_models, cpu_half, precision):
    d = small_models
    audio, _ = sf.read(SPEECH, dtype="float32")
    audio = audio[:16000]
    options = ConversionOptions(f0_method="pm", deterministic=True)
    out32, rate32 = VoiceConverter(load_voice(d / "voice.pth"), load_hubert(d / "hubert_base.pt"),
                                   precision="float32").convert_16k(audio, options)
    converter = VoiceConverter(load_voice(d / "voice.pth"), load_hubert(d / "hubert_base.pt"),
                               precision=precision)
    assert converter.precision == precision
    dtype = HALF[precision]
    hubert = converter.hubert
    assert hubert.layers[0].fc1.weight.dtype == dtype and hubert.feature_proj.weight.dtype == dtype
    assert hubert.feature_extractor.convs[0].weight.dtype == mx.float32  # first conv + GroupNorm kept
    assert converter.synthesizer.dtype == dtype
    with conv_impl("mlx"):  # the layers' plain-MLX path, the one GPU back ends run
        out, rate = converter.convert_16k(audio, options)
    assert out.dtype == np.float32 and rate == rate32 and out.shape == out32.shape
    assert np.isfinite(out).all()
    snr = snr_db(out, out32)
    print(f"conversion {precision}: SNR {snr:.1f} dB vs float32")
    assert snr >= PIPELINE_SNR_FLOOR[precision]


def test_float32_leaves_models_untouched(small_models):
    voice, hubert = load_voice(small_models / "voice.pth"), load_hubert(small_models / "hubert_base.pt")
    before = {id(v) for m in (voice, hubert) for _, v in tree_flatten(m.parameters())}
    converter = VoiceConverter(voice, hubert, precision="float32")
    after = {id(v) for m in (voice, hubert) for _, v in tree_flatten(m.parameters())}
    assert converter.precision == "float32" and before == after  # not even re-created as float32 copies
    assert set(parameter_dtypes(voice)) == {"float32"}
