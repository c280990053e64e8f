"""RMVPE in MLX against the reference ``rvc.lib.rmvpe`` (rvc 0.3.5) with random weights.

The full-size E2E(4, 1, (2, 2)) is saved with torch.save in the real ``rmvpe.pt`` layout and read back by
our loader (no torch). Its final linear layer is rescaled so that saliences straddle the 0.03 voicing
threshold (random weights would otherwise voice every frame). Audio: tests/data/speech_16k.wav (espeak-ng).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

import rvc_mlx  # noqa: F401  (loads the BLAS before mlx.core)

import mlx.core as mx  # isort: skip
import torch  # isort: skip

from rvc_mlx import pitch  # isort: skip
from rvc_mlx.checkpoints import native  # isort: skip
from rvc_mlx.checkpoints import rmvpe as ckpt  # isort: skip
from rvc_mlx.errors import AudioError, CheckpointError  # isort: skip
from rvc_mlx.models import rmvpe  # isort: skip

SPEECH = os.path.join(os.path.dirname(__file__), "data", "speech_16k.wav")
SALIENCE_TOL = 1e-4  # max abs difference of saliences (sigmoid outputs)
CENTS_TOL = 1.0  # max |cents difference| on voiced frames


def _randomize_batch_norms(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial running statistics and affine terms, so that folding them is actually tested."""
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            c = mod.num_features
            mod.running_mean.copy_(0.1 * torch.randn(c, generator=g))
            mod.running_var.copy_(0.75 + 0.5 * torch.rand(c, generator=g))
            mod.weight.data.copy_(0.75 + 0.5 * torch.rand(c, generator=g))
            mod.bias.data.copy_(0.1 * torch.randn(c, generator=g))


def _reference_e2e(seed: int = 0, n_blocks: int = 4, **kwargs):
    from rvc.lib.rmvpe import E2E

    torch.manual_seed(seed)
    model = E2E(n_blocks, 1, (2, 2), **kwargs).eval()
    _randomize_batch_norms(model, seed + 1)
    return model


class _ReflectPad:
    """Stands in for torch.nn.functional inside rvc.lib.rmvpe: mel2hidden's frame padding becomes reflect
    (the WebUI/Applio behaviour); everything else is passed through."""

    def __getattr__(self, name):
        return getattr(torch.nn.functional, name)

    @staticmethod
    def pad(x, pad, mode="constant", value=None):
        return torch.nn.functional.pad(x, pad, mode="reflect")


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    audio, sr = sf.read(SPEECH, dtype="float32")
    assert sr == 16000 and audio.ndim == 1
    return audio


@pytest.fixture(scope="module")
def full(tmp_path_factory, speech):
    """(reference RMVPE object, path of rmvpe.pt) for the full-size model, calibrated on the speech."""
    from rvc.lib import rmvpe as ref_mod

    e2e = _reference_e2e()
    # Calibrate the salience head on this audio: rescale the per-frame best logit to unit-ish spread and put
    # logit(0.03) in the middle of the widest gap between frames near the median, so about half the frames
    # are voiced and none sits within float rounding of the threshold (checked for both paddings below).
    captured = []
    hook = e2e.fc[0].register_forward_hook(lambda m, i, o: captured.append(o[0]))
    with torch.no_grad():
        mel = ref_mod.MelSpectrogram(False, 128, 16000, 1024, 160, None, 30, 8000)(
            torch.from_numpy(speech)[None], center=True)
        n = mel.shape[-1]
        e2e(torch.nn.functional.pad(mel, (0, 32 * ((n - 1) // 32 + 1) - n), mode="reflect"))
        hook.remove()
        best = torch.cat([e2e.fc[1](h[:n]).max(dim=1).values for h in captured]).numpy()
        scale = 4.0 / float(best.std())
        z = np.sort(scale * best)
        mid = slice(int(0.4 * z.size), int(0.6 * z.size))
        gaps = np.diff(z)[mid]
        k = int(np.argmax(gaps)) + mid.start
        shift = float(np.log(0.03 / 0.97)) - 0.5 * (z[k] + z[k + 1])
        e2e.fc[1].weight.mul_(scale)
        e2e.fc[1].bias.mul_(scale).add_(shift)
    path = tmp_path_factory.mktemp("rmvpe") / "rmvpe.pt"
    torch.save(e2e.state_dict(), path)
    ref = ref_mod.RMVPE(str(path), is_half=False, device="cpu")
    return ref, path


@pytest.fixture(scope="module")
def ours(full):
    return ckpt.load_rmvpe(full[1])


def _reference_salience(ref, audio: np.ndarray, mel_padding: str, monkeypatch) -> np.ndarray:
    from rvc.lib import rmvpe as ref_mod

    if mel_padding == "reflect":
        monkeypatch.setattr(ref_mod, "F", _ReflectPad())
    mel = ref.mel_extractor(torch.from_numpy(audio).float()[None], center=True)
    return ref.mel2hidden(mel).squeeze(0).numpy()


def _cents(f0: np.ndarray) -> np.ndarray:
    return 1200 * np.log2(np.where(f0 > 0, f0, 1.0) / 10)


def test_mel_matches_reference(full, speech):
    """log-mel vs the reference: <= 1e-4 wherever the mel is >= 1e-3; on near-silent bands float32 FFT
    round-off dominates (the reference itself is ~5e-4 from a float64 computation there), so those are held
    to 1e-3 in log and to 1e-6 of the peak in linear mel."""
    ref, _ = full
    with torch.no_grad():
        want = ref.mel_extractor(torch.from_numpy(speech)[None], center=True).numpy().transpose(0, 2, 1)
    got = np.array(rmvpe.log_mel(mx.array(speech)[None]))
    assert got.shape == want.shape == (1, 1 + speech.size // 160, 128)
    err = np.abs(got - want)
    loud = want >= np.log(1e-3)
    print(f"log-mel max abs err {err[loud].max():.2e} (mel >= 1e-3), {err.max():.2e} (all)")
    assert err[loud].max() <= 1e-4
    assert err.max() <= 1e-3
    assert np.max(np.abs(np.exp(got) - np.exp(want))) <= 1e-6 * np.exp(want).max()


@pytest.fixture(scope="module")
def our_salience(ours, speech):
    return {mode: rmvpe.salience_from_audio(ours, speech, mel_padding=mode) for mode in rmvpe.MEL_PADDINGS}


@pytest.mark.parametrize("mel_padding", ["reflect", "constant"])
def test_salience_and_f0_match_reference(full, our_salience, speech, mel_padding, monkeypatch):
    ref, _ = full
    want_sal = _reference_salience(ref, speech, mel_padding, monkeypatch)
    want_f0 = ref.decode(want_sal, thred=0.03)
    got_sal = our_salience[mel_padding]
    assert got_sal.shape == want_sal.shape == (1 + speech.size // 160, 360)
    err = float(np.max(np.abs(got_sal - want_sal)))
    print(f"{mel_padding}: salience max abs err {err:.2e}")
    assert err <= SALIENCE_TOL
    got_f0 = rmvpe.decode(got_sal, 0.03)
    voiced = want_f0 > 0
    assert 0.3 < voiced.mean() < 0.7, "calibration should give a voiced/unvoiced mix"
    gap = np.min(np.abs(want_sal.max(axis=1) - 0.03))
    assert gap > 10 * err, "a frame within rounding of the threshold (see test_decoder_on_the_threshold)"
    np.testing.assert_array_equal(got_f0 > 0, voiced)
    cents = np.max(np.abs(_cents(got_f0) - _cents(want_f0))[voiced])
    print(f"{mel_padding}: {voiced.sum()}/{voiced.size} voiced, max cents err {cents:.2e}, "
          f"closest frame to the threshold {gap:.1e} away")
    assert cents <= CENTS_TOL
    # our decoder on the reference's own salience is the reference's f0, bit for bit
    np.testing.assert_array_equal(rmvpe.decode(want_sal, 0.03), want_f0)


def test_f0_from_audio_decodes_in_blocks(ours, our_salience, speech, monkeypatch):
    """`f0_from_audio` decodes long salience in blocks of frames: the same f0 as one `decode` call."""
    monkeypatch.setattr(rmvpe, "DECODE_BLOCK_FRAMES", 23)
    got = rmvpe.f0_from_audio(ours, speech, mel_padding="reflect")
    np.testing.assert_array_equal(got, rmvpe.decode(our_salience["reflect"], 0.03))


def test_paddings_differ(our_salience):
    """The two frame paddings are not the same computation (the GRU sees the padded tail)."""
    assert np.max(np.abs(our_salience["reflect"] - our_salience["constant"])) > 1e-3


def test_decoder_on_the_threshold(full):
    """Frames whose best salience is exactly float32(0.03) (<= threshold: unvoiced) or one ulp above."""
    ref, _ = full
    rng = np.random.default_rng(3)
    sal = (rng.random((64, 360)) * 0.02).astype(np.float32)
    at = np.float32(0.03)
    bins = rng.integers(0, 360, 64)
    sal[np.arange(64), bins] = np.where(np.arange(64) % 2 == 0, at, np.nextafter(at, np.float32(1)))
    sal[5, :3] = at  # argmax at the first bins (window partly in the zero padding)
    sal[7, -2:] = np.nextafter(at, np.float32(1))  # ... and at the last ones
    want = ref.decode(sal, thred=0.03)
    got = rmvpe.decode(sal, 0.03)
    np.testing.assert_array_equal(got, want)
    assert (got[::2] == 0).all() and (got[1::2] > 0).all()


@pytest.fixture(scope="module")
def shallow():
    """A shallow variant of the same structure (1 block per stage, 1 intermediate stage, 4 channels): small
    receptive field, fast. The receptive-field code is one function of the config for every variant."""
    e2e = _reference_e2e(seed=7, n_blocks=1, inter_layers=1, en_out_channels=4)
    return e2e, ckpt.model_from_state({k: v.numpy() for k, v in e2e.state_dict().items()})


def test_unet_receptive_field_is_exact(shallow):
    """The frames with a non-zero input gradient, in the reference (torch autograd) and in ours (mx.grad),
    are exactly `unet_input_span` for output frames at several phases of the 32-frame pooling grid."""
    e2e, model = shallow
    t_total = 512
    mel = np.random.default_rng(4).standard_normal((1, t_total, 128)).astype(np.float32)
    for t in (256, 271, 287):  # phases 0, 15, 31
        want = rmvpe.unet_input_span(model.config, t)
        x = torch.from_numpy(mel).transpose(1, 2).clone().requires_grad_(True)  # (1, 128, T)
        e2e.cnn(e2e.unet(x.transpose(-1, -2).unsqueeze(1)))[0, :, t].sum().backward()
        ref_support = np.nonzero(x.grad[0].abs().amax(0).numpy() > 0)[0]
        grad = mx.grad(lambda m, t=t: model.unet(m)[0, t].sum())(mx.array(mel))
        our_support = np.nonzero(np.abs(np.array(grad[0])).max(axis=1) > 0)[0]
        assert (ref_support.min(), ref_support.max()) == want
        assert (our_support.min(), our_support.max()) == want


def test_chunked_unet_equals_single_pass(shallow):
    """Chunks with `unet_margin_frames` of context equal the single pass up to float rounding (different
    GEMM sizes); the GRU always runs over the whole sequence, so the salience follows."""
    _, model = shallow
    margin = rmvpe.unet_margin_frames(model.config)
    t = 3 * 128 + 2 * margin
    mel = mx.array(np.random.default_rng(9).standard_normal((1, t, 128)).astype(np.float32))
    whole = np.array(model.unet_features(mel))
    chunked = np.array(model.unet_features(mel, chunk_frames=128))
    err = np.max(np.abs(chunked - whole)) / np.max(np.abs(whole))
    print(f"margin {margin} frames, chunked vs whole rel err {err:.2e}")
    assert err <= 1e-6
    np.testing.assert_allclose(np.array(model(mel, chunk_frames=128)), np.array(model(mel)), atol=1e-6)


def test_slabbed_stages_equal_single_pass(shallow):
    """Each U-Net stage runs in slabs with its own halo (memory bound); tiny slabs change nothing but
    rounding, including a slab size that does not divide the level lengths."""
    _, model = shallow
    mel = mx.array(np.random.default_rng(10).standard_normal((1, 320, 128)).astype(np.float32))
    whole = np.array(model.unet(mel, slab_frames=None))
    scale = np.max(np.abs(whole))
    for slab in (16, 24, 100):
        err = np.max(np.abs(np.array(model.unet(mel, slab_frames=slab)) - whole)) / scale
        assert err <= 1e-6, (slab, err)



def _cpu_streams(n: int):
    streams = [mx.new_stream(mx.cpu) for _ in range(n)]
    return lambda: streams


@pytest.mark.parametrize("n_streams", [2, 3])
def test_cpu_lanes_equal_plain_path(shallow, monkeypatch, n_streams):
    """The CPU path on several streams (every conv split over time, parts reading their neighbours' frames)
    equals the plain MLX path up to rounding, with and without slabs, in even and uneven parts (3 streams
    over the 10 frames of the deepest level); with one stream the CPU path is the plain path."""
    from rvc_mlx.models import conv

    _, model = shallow
    mel = mx.array(np.random.default_rng(11).standard_normal((1, 320, 128)).astype(np.float32))
    with conv.conv_impl("mlx"):
        plain = np.array(model.unet(mel, slab_frames=24))
    scale = np.max(np.abs(plain))
    monkeypatch.setattr(rmvpe, "cpu_streams", _cpu_streams(n_streams))
    with conv.conv_impl("gemm"):
        for slab in (24, None):
            err = np.max(np.abs(np.array(model.unet(mel, slab_frames=slab)) - plain)) / scale
            assert err <= 1e-6, (slab, err)
        monkeypatch.setattr(rmvpe, "cpu_streams", _cpu_streams(1))
        np.testing.assert_array_equal(np.array(model.unet(mel, slab_frames=24)), plain)


def test_cpu_lanes_match_reference(full, ours, speech, monkeypatch):
    """The full model on the CPU path with 3 streams: saliences against the reference (reflect padding) and
    against the plain MLX path."""
    from rvc_mlx.models import conv

    ref, _ = full
    want = _reference_salience(ref, speech, "reflect", monkeypatch)
    with conv.conv_impl("mlx"):
        plain = rmvpe.salience_from_audio(ours, speech)
    monkeypatch.setattr(rmvpe, "cpu_streams", _cpu_streams(3))
    with conv.conv_impl("gemm"):
        got = rmvpe.salience_from_audio(ours, speech)
    err, err_plain = float(np.max(np.abs(got - want))), float(np.max(np.abs(got - plain)))
    print(f"3 CPU streams: salience max abs err {err:.2e} to the reference, {err_plain:.2e} to plain MLX")
    assert err <= SALIENCE_TOL
    assert err_plain <= 1e-5

# ---------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shallow_pt(shallow, tmp_path_factory):
    path = tmp_path_factory.mktemp("shallow") / "rmvpe.pt"
    torch.save(shallow[0].state_dict(), path)
    return path


def test_torch_file_and_native_file_load_the_same_model(shallow, shallow_pt, tmp_path, speech):
    _, from_state = shallow
    from_pt = ckpt.load_rmvpe(shallow_pt)  # read without torch
    dst = tmp_path / "rmvpe.safetensors"
    config = ckpt.convert_rmvpe(shallow_pt, dst)
    assert config == from_pt.config == rmvpe.RMVPEConfig(n_blocks=1, inter_layers=1, en_out_channels=4)
    from_native = ckpt.load_rmvpe(dst)
    audio = speech[:8000]
    want = rmvpe.salience_from_audio(from_state, audio)
    np.testing.assert_array_equal(rmvpe.salience_from_audio(from_pt, audio), want)
    np.testing.assert_array_equal(rmvpe.salience_from_audio(from_native, audio), want)
    with pytest.raises(CheckpointError, match="overwrite"):
        ckpt.convert_rmvpe(shallow_pt, shallow_pt)


def test_files_that_are_not_rmvpe(shallow, tmp_path):
    e2e, _ = shallow
    state = e2e.state_dict()
    cases = {
        "voice.pth": {"weight": {"emb_g.weight": torch.zeros(1, 256)}, "config": [1, 2], "version": "v2"},
        "linear.pt": torch.nn.Linear(3, 4).state_dict(),
        "missing.pt": {k: v for k, v in state.items() if k != "cnn.bias"},
        "extra.pt": {**state, "fc.2.weight": torch.zeros(3)},
        "shape.pt": {**state, "fc.1.bias": torch.zeros(361)},
        "nan.pt": {**state, "cnn.bias": torch.full((3,), float("nan"))},
        "list.pt": [1, 2, 3],
    }
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(CheckpointError) as info:
            ckpt.load_rmvpe(tmp_path / name)
        assert info.value.path == str(tmp_path / name), name
    (tmp_path / "text.pt").write_text("not a checkpoint")
    native.save_native(tmp_path / "hubert.safetensors", {"a": np.zeros(3, np.float32)}, "hubert")
    for name in ("text.pt", "hubert.safetensors", "absent.pt"):
        with pytest.raises(CheckpointError):
            ckpt.load_rmvpe(tmp_path / name)


# ---------------------------------------------------------------------------------------------------------
# estimate_f0
# ---------------------------------------------------------------------------------------------------------


def test_estimate_f0_resamples_and_finds_the_default_model(shallow, shallow_pt, speech, monkeypatch):
    import soxr

    _, model = shallow
    x22 = soxr.resample(speech, 16000, 22050, quality="HQ")
    x16 = soxr.resample(x22, 22050, 16000, quality="HQ")
    monkeypatch.setenv("RVC_MLX_HOME", str(shallow_pt.parent))
    f0 = pitch.estimate_f0(x22, 22050)  # model: $RVC_MLX_HOME/rmvpe.pt
    assert f0.shape == (1 + x16.size // 160,)
    np.testing.assert_array_equal(f0, rmvpe.f0_from_audio(model, x16, chunk_frames=None))
    f0_const = pitch.estimate_f0(speech, 16000, model=shallow_pt, mel_padding="constant", threshold=0.5)
    np.testing.assert_array_equal(f0_const, rmvpe.f0_from_audio(model, speech, 0.5, "constant"))
    f0_obj = pitch.estimate_f0(speech, 16000, model=model)  # an already loaded model
    np.testing.assert_array_equal(f0_obj, rmvpe.f0_from_audio(model, speech))
    loaded = pitch.cached_model("rmvpe", shallow_pt, ckpt.load_rmvpe)
    assert pitch.cached_model("rmvpe", shallow_pt, ckpt.load_rmvpe) is loaded
    assert "rmvpe" in pitch.available_methods()


def test_estimate_f0_bad_input(shallow_pt, tmp_path, monkeypatch, speech):
    bad_audio = {
        "empty": (np.zeros(0, np.float32), 16000),
        "too short": (np.zeros(pitch.RMVPE_MIN_SAMPLES - 1, np.float32), 16000),
        "nan": (np.full(4000, np.nan, np.float32), 16000),
        "inf": (np.concatenate([np.zeros(3999), [np.inf]]), 16000),
        "stereo": (np.zeros((2, 4000), np.float32), 16000),
        "float rate": (np.zeros(4000, np.float32), 16000.0),
        "str rate": (np.zeros(4000, np.float32), "16000"),
        "zero rate": (np.zeros(4000, np.float32), 0),
        "strings": (np.array(["a", "b"]), 16000),
    }
    for name, (audio, sr) in bad_audio.items():
        with pytest.raises(AudioError):
            pitch.estimate_f0(audio, sr, model=shallow_pt)
            pytest.fail(name)
    with pytest.raises(ValueError, match="unknown f0 method"):
        pitch.estimate_f0(speech, 16000, method="nope")
    torch.save(torch.nn.Linear(3, 4).state_dict(), tmp_path / "other.pt")
    with pytest.raises(CheckpointError):
        pitch.estimate_f0(speech, 16000, model=tmp_path / "other.pt")
    monkeypatch.setenv("RVC_MLX_HOME", str(tmp_path / "empty"))
    with pytest.raises(CheckpointError, match="not found"):
        pitch.estimate_f0(speech, 16000)
