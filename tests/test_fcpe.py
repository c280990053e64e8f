"""FCPE in MLX vs torchfcpe 0.0.4 with its real bundled weights (`fcpe_c_v001.pt`), on the same audio.

Tolerances: log-mel <= 2e-4 absolute; salience rel_err <= 1e-4; f0 on frames both call voiced <= 1 cent median
and <= 5 cents p99; voicing decisions equal on >= 99.5 % of frames. Accuracy on synthetic harmonic audio of
known pitch: RPA (within 50 cents) >= 95 %, voicing recall >= 95 % and precision >= 95 % away from on/offsets.
"""

from __future__ import annotations

import os
import subprocess
import sys

import rvc_mlx  # noqa: F401  (loads OpenBLAS before mlx.core)

# isort: split
import mlx.core as mx
import numpy as np
import pytest
from conftest import rel_err

from rvc_mlx.checkpoints import fcpe as ckpt
from rvc_mlx.errors import AudioError, CheckpointError
from rvc_mlx.models.fcpe import fcpe_f0

torch = pytest.importorskip("torch")
torchfcpe = pytest.importorskip("torchfcpe")

SR = 16000
HOP = 160
SPEECH = os.path.join(os.path.dirname(__file__), "data", "speech_16k.wav")


# ---------------------------------------------------------------------------------------------------------
# Signals of known pitch
# ---------------------------------------------------------------------------------------------------------


def _harmonic(f0_hz: np.ndarray, rng: np.random.Generator, n_harmonics: int = 10) -> np.ndarray:
    """Sum of harmonics with a 1/k roll-off following the per-sample f0 (0 = silence)."""
    phase = 2 * np.pi * np.cumsum(f0_hz) / SR
    k = np.arange(1, n_harmonics + 1)[:, None]
    amp = (1.0 / k) * (k * f0_hz[None] < SR / 2 - 200)  # keep harmonics below Nyquist
    voiced = np.sin(k * phase[None] + rng.uniform(0, 2 * np.pi, (n_harmonics, 1))) * amp
    return 0.25 * voiced.sum(0) * (f0_hz > 0)


def known_pitch_signal(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """3.6 s of glides and vibrato between 80 and 900 Hz with silent gaps -> (audio (N,), f0 per sample)."""
    t = np.arange(int(0.6 * SR)) / SR
    gap = np.zeros(int(0.15 * SR))
    parts = [
        gap,
        np.geomspace(85, 180, t.size),  # low glide
        gap,
        220 * 2 ** (np.sin(2 * np.pi * 5.5 * t) / 12),  # vibrato, +-1 semitone at 5.5 Hz
        gap,
        np.geomspace(300, 880, t.size),  # high glide
        gap,
        np.full(t.size, 130.0),  # steady tone
        gap,
        np.geomspace(500, 120, t.size),  # falling glide
        gap,
    ]
    f0 = np.concatenate(parts)
    audio = _harmonic(f0, rng) + 1e-3 * rng.standard_normal(f0.size)
    return audio.astype(np.float32), f0


def frame_truth(f0_per_sample: np.ndarray, guard: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame truth at sample 160 i: (f0, voiced, frames clear of on/offsets by `guard` frames).

    (Frame i's analysis window is centred at sample 160 i + 80, but the model was trained to report the pitch
    at 160 i, RVC's frame time: on glides the error is ~2 cents at 160 i, 10-20 cents at 160 i + 80.)
    """
    n_frames = f0_per_sample.size // HOP + 1
    centres = np.minimum(np.arange(n_frames) * HOP, f0_per_sample.size - 1)
    f0 = f0_per_sample[centres]
    voiced = f0 > 0
    change = np.flatnonzero(np.diff(voiced.astype(int)))
    clear = np.ones(n_frames, bool)
    for c in change:  # a handful of transitions
        clear[max(c - guard, 0) : c + guard + 2] = False
    return f0, voiced, clear


# ---------------------------------------------------------------------------------------------------------
# Fixtures: reference and ours from the same checkpoint file
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference():
    model = torchfcpe.spawn_bundled_infer_model(device="cpu")
    model.eval()
    return model


@pytest.fixture(scope="module")
def ours():
    """Loaded the way users load it: the bundled .pt through our torch-free reader."""
    return ckpt.load_fcpe()


@pytest.fixture(scope="module")
def signal():
    return known_pitch_signal(np.random.default_rng(1))


def _ref_f0(reference, audio: np.ndarray, **kwargs) -> np.ndarray:
    with torch.no_grad():
        out = reference.infer(torch.from_numpy(audio)[None], sr=SR, decoder_mode="local_argmax", **kwargs)
    return out.numpy().reshape(-1)


def _compare_f0(ours_f0: np.ndarray, ref_f0: np.ndarray) -> tuple[float, float, float]:
    """(voicing agreement, median |cents|, p99 |cents|) on frames both call voiced."""
    assert ours_f0.shape == ref_f0.shape
    agree = float(np.mean((ours_f0 > 0) == (ref_f0 > 0)))
    both = (ours_f0 > 0) & (ref_f0 > 0)
    if not both.any():
        return agree, 0.0, 0.0
    cents = np.abs(1200 * np.log2(ours_f0[both] / ref_f0[both]))
    return agree, float(np.median(cents)), float(np.percentile(cents, 99))


# ---------------------------------------------------------------------------------------------------------
# Parity
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_samples", [1, 100, 432, 433, 1000, 16000])
def test_log_mel_matches_torchfcpe(reference, ours, n_samples):
    """Padding rules (constant below 433 samples, reflect above), frame count N // 160 + 1, values."""
    audio = np.random.default_rng(n_samples).uniform(-0.5, 0.5, n_samples).astype(np.float32)
    with torch.no_grad():
        ref = reference.wav2mel(torch.from_numpy(audio)[None, :, None], SR).numpy()
    got = np.array(ours.mel(mx.array(audio)[None]))
    assert got.shape == ref.shape == (1, n_samples // HOP + 1, 128)
    assert np.max(np.abs(got - ref)) <= 2e-4


def test_salience_matches_torchfcpe(reference, ours, signal):
    audio = signal[0]
    with torch.no_grad():
        mel = reference.wav2mel(torch.from_numpy(audio)[None, :, None], SR)
        ref = reference.model(mel).numpy()
    same_mel = np.array(ours(mx.array(mel.numpy())))
    assert rel_err(same_mel, ref) <= 1e-4, rel_err(same_mel, ref)
    end_to_end = np.array(ours(ours.mel(mx.array(audio)[None])))
    assert rel_err(end_to_end, ref) <= 1e-4, rel_err(end_to_end, ref)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"threshold": 0.006},  # Applio's call: no f0 range, natural length
        {"threshold": 0.006, "f0_min": 50, "f0_max": 1100},  # torchfcpe README style
        {"threshold": 0.05, "f0_min": 80, "f0_max": 500, "interp_uv": True,
         "output_interp_target_length": 333},
    ],
)
def test_f0_matches_torchfcpe(reference, ours, signal, kwargs):
    audio = signal[0]
    ref = _ref_f0(reference, audio, **kwargs)
    got = fcpe_f0(
        audio,
        model=ours,
        threshold=kwargs["threshold"],
        f0_min=kwargs.get("f0_min", 50.0),
        f0_max=kwargs.get("f0_max"),
        n_frames=kwargs.get("output_interp_target_length"),
        interp_unvoiced=kwargs.get("interp_uv", False),
    )
    assert got.dtype == np.float32
    assert got.shape == (kwargs.get("output_interp_target_length", audio.size // HOP + 1),)
    agree, median, p99 = _compare_f0(got, ref)
    print(f"\nFCPE vs torchfcpe {kwargs}: voicing agree {agree:.4f}, cents median {median:.2e} p99 {p99:.2e}")
    assert agree >= 0.995
    assert median <= 1.0 and p99 <= 5.0


@pytest.mark.skipif(not os.path.isfile(SPEECH), reason="tests/data/speech_16k.wav not present")
def test_speech_matches_torchfcpe(reference, ours):
    import soundfile

    audio, sr = soundfile.read(SPEECH, dtype="float32")
    assert sr == SR and audio.ndim == 1
    with torch.no_grad():
        ref_salience = reference.model(reference.wav2mel(torch.from_numpy(audio)[None, :, None], SR)).numpy()
    salience = np.array(ours(ours.mel(mx.array(audio)[None])))
    got = fcpe_f0(audio, model=ours, f0_max=None)
    agree, median, p99 = _compare_f0(got, _ref_f0(reference, audio, threshold=0.006))
    err = rel_err(salience, ref_salience)
    print(f"\nFCPE speech: salience rel_err {err:.1e}, voicing agree {agree:.4f}, "
          f"cents median {median:.2e} p99 {p99:.2e}, voiced {np.mean(got > 0):.2f}")
    assert err <= 1e-4
    assert agree >= 0.995 and median <= 1.0 and p99 <= 5.0


def test_f0_on_white_noise_and_silence(reference, ours):
    """Unvoiced-heavy input: the thresholded decisions must agree too."""
    rng = np.random.default_rng(7)
    audio = np.concatenate([np.zeros(4000), 0.1 * rng.standard_normal(12000)]).astype(np.float32)
    got = fcpe_f0(audio, model=ours, f0_max=None)
    agree, _, _ = _compare_f0(got, _ref_f0(reference, audio, threshold=0.006))
    assert agree >= 0.995


def test_cpu_sigmoid_matches_float64():
    """The arithmetic exp used for the sigmoids on the CPU back end: ~1 ulp, saturating cleanly."""
    from rvc_mlx.models.activations import exp_arith as _exp_arith
    from rvc_mlx.models.activations import sigmoid as _sigmoid

    x = np.concatenate([np.linspace(-200, 200, 200001), [-87.0, 88.0, 0.0, -1e-8]]).astype(np.float32)
    exact = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    with mx.stream(mx.cpu):
        got = np.array(_sigmoid(mx.array(x)))
        inner = x[np.abs(x) <= 87]
        exp_got = np.array(_exp_arith(mx.array(inner))).astype(np.float64)
    assert np.max(np.abs(got - exact)) <= 1.2e-7
    exp_exact = np.exp(inner.astype(np.float64))
    assert np.max(np.abs(exp_got - exp_exact) / exp_exact) <= 3e-7
    assert np.all(np.isfinite(got)) and got.min() >= 0 and got.max() <= 1


# ---------------------------------------------------------------------------------------------------------
# Accuracy on known pitch
# ---------------------------------------------------------------------------------------------------------


def test_accuracy_on_known_pitch(ours, signal):
    audio, f0_samples = signal
    truth, voiced, clear = frame_truth(f0_samples)
    got = fcpe_f0(audio, model=ours)
    assert got.shape == truth.shape
    sel = voiced & clear
    cents = np.abs(1200 * np.log2(np.maximum(got[sel], 1e-3) / truth[sel]))
    rpa = float(np.mean((got[sel] > 0) & (cents < 50)))
    recall = float(np.mean(got[sel] > 0))
    detected = (got > 0) & clear
    precision = float(np.mean(voiced[detected])) if detected.any() else 0.0
    print(f"\nFCPE known pitch: RPA {rpa:.4f}, voicing recall {recall:.4f}, precision {precision:.4f}, "
          f"median error {np.median(cents):.2f} cents over {sel.sum()} voiced frames")
    assert rpa >= 0.95
    assert recall >= 0.95 and precision >= 0.95


# ---------------------------------------------------------------------------------------------------------
# Checkpoint handling and input checks
# ---------------------------------------------------------------------------------------------------------


def test_reader_conversion_equals_torch_load(ours):
    """Our reader + converter give the same weights as converting torch.load's state dict."""
    from mlx.utils import tree_flatten

    path = ckpt.bundled_checkpoint_path()
    raw = torch.load(path, map_location="cpu", weights_only=True)
    config = ckpt.config_from_dict(raw["config_dict"], path)
    assert config == ours.config
    expected = ckpt.convert_state_dict({k: v.numpy() for k, v in raw["model"].items()}, config, path)
    got = dict(tree_flatten(ours.parameters()))
    assert set(got) == set(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(np.array(got[name]), value, err_msg=name)


def test_small_variant_with_harmonic_embedding(rng):
    """Other widths, parametrization-style weight-norm keys and a harmonic embedding (random weights)."""
    from torchfcpe.models import CFNaiveMelPE

    torch.manual_seed(0)
    ref = CFNaiveMelPE(128, 360, hidden_dims=64, n_layers=2, n_heads=8, f0_max=1975.5, f0_min=32.7,
                       use_fa_norm=True, conv_only=True, use_harmonic_emb=True).eval()
    with torch.no_grad():
        ref.harmonic_emb.weight.normal_()
        ref.input_stack[1].weight.uniform_(0.5, 1.5)
    state = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    assert "output_proj.parametrizations.weight.original1" in state and "harmonic_emb.weight" in state
    raw_config = {"mel": {"sr": 16000, "num_mels": 128, "n_fft": 1024, "win_size": 1024, "hop_size": 160,
                          "fmin": 0, "fmax": 8000},
                  "model": {"type": "CFNaiveMelPE", "out_dims": 360, "hidden_dims": 64, "n_layers": 2,
                            "f0_min": 32.7, "f0_max": 1975.5, "conv_only": True}}
    config = ckpt.config_from_dict(raw_config)
    model = ckpt.build_fcpe(ckpt.convert_state_dict(state, config), config)
    mel = rng.uniform(-11, 1, (2, 50, 128)).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(mel)).numpy()
    got = np.array(model(mx.array(mel)))
    assert rel_err(got, expected) <= 1e-4, rel_err(got, expected)


def test_native_round_trip(tmp_path, ours, signal):
    from rvc_mlx.checkpoints.native import load_native

    path = tmp_path / "fcpe.safetensors"
    ckpt.convert_fcpe_checkpoint(ckpt.bundled_checkpoint_path(), path)
    loaded = ckpt.load_fcpe(path)
    assert loaded is not ours and loaded.config == ours.config
    audio = signal[0][: 2 * SR]
    np.testing.assert_array_equal(fcpe_f0(audio, model=loaded), fcpe_f0(audio, model=ours))
    assert ckpt.load_fcpe(path) is loaded  # cached
    with pytest.raises(CheckpointError):
        load_native(path, "rmvpe")


def test_default_checkpoint_lookup(tmp_path, monkeypatch):
    """The models directory is searched first, then the copy inside the torchfcpe package."""
    monkeypatch.setenv("RVC_MLX_HOME", str(tmp_path))
    assert ckpt.default_checkpoint_path() == ckpt.bundled_checkpoint_path()
    (tmp_path / ckpt.BUNDLED_NAME).symlink_to(ckpt.bundled_checkpoint_path())
    assert ckpt.default_checkpoint_path() == tmp_path / ckpt.BUNDLED_NAME


def test_bad_checkpoints_raise_checkpoint_error(tmp_path):
    raw = torch.load(ckpt.bundled_checkpoint_path(), map_location="cpu", weights_only=True)
    config = ckpt.config_from_dict(raw["config_dict"])
    state = {k: v.numpy() for k, v in raw["model"].items()}
    missing = dict(state)
    del missing["input_stack.0.weight"]
    with pytest.raises(CheckpointError, match="missing weight input_stack.0.weight"):
        ckpt.convert_state_dict(missing, config, "x.pt")
    wrong = dict(state, **{"norm.bias": np.zeros(3, np.float32)})
    with pytest.raises(CheckpointError, match="norm.bias has shape"):
        ckpt.convert_state_dict(wrong, config, "x.pt")
    extra = dict(state, **{"net.encoder_layers.0.attn.to_q.weight": np.zeros((512, 512), np.float32)})
    with pytest.raises(CheckpointError, match="unexpected weights"):
        ckpt.convert_state_dict(extra, config, "x.pt")
    attention = dict(raw["config_dict"], model=dict(raw["config_dict"]["model"], conv_only=False))
    with pytest.raises(CheckpointError, match="attention"):
        ckpt.config_from_dict(attention, "x.pt")
    with pytest.raises(CheckpointError, match="incomplete"):
        ckpt.config_from_dict({"mel": {}, "model": {"type": "CFNaiveMelPE", "conv_only": True}}, "x.pt")
    with pytest.raises(CheckpointError, match="not found"):
        ckpt.load_fcpe("/nonexistent/fcpe.pt")
    not_fcpe = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(3)}, not_fcpe)
    with pytest.raises(CheckpointError, match="not a torchfcpe checkpoint"):
        ckpt.load_fcpe(not_fcpe)


def test_bad_audio_raises_audio_error(ours):
    for bad in (np.zeros((2, 100), np.float32), np.zeros(0, np.float32), np.array([0.0, np.nan], np.float32)):
        with pytest.raises(AudioError):
            fcpe_f0(bad, model=ours)


def test_modules_do_not_import_torch():
    code = (
        "import sys, rvc_mlx.checkpoints.fcpe, rvc_mlx.models.fcpe\n"
        "assert 'torch' not in sys.modules and 'torchfcpe' not in sys.modules\n"
        "assert rvc_mlx.checkpoints.fcpe.bundled_checkpoint_path() is not None\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
