"""RVC voice files: torch-free reading, weight-norm folding, layouts, native format, info, bad input."""

from __future__ import annotations

import subprocess
import sys

import rvc_mlx  # noqa: F401  (loads OpenBLAS before mlx.core)

# isort: split
import mlx.core as mx
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten
from test_synthesizer import make_inputs, make_voice

from rvc_mlx.checkpoints.voice import (
    convert_state_dict,
    convert_voice,
    load_voice,
    read_voice,
    voice_info,
)
from rvc_mlx.errors import CheckpointError
from rvc_mlx.models.synthesizer import VoiceConfig

pytestmark = pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")  # the reference's weight_norm


@pytest.fixture(scope="module")
def voice_file(tmp_path_factory):
    """A small v2 pitch voice at 40k in RVC's export layout: (path, reference model, config list)."""
    path = tmp_path_factory.mktemp("voice") / "v2_40k.pth"
    ref, config = make_voice(path, "v2", 1, 40000)
    return path, ref, config


def _infer(voice, config, frames=12):
    content, pitch, f0, _, _ = make_inputs(config, "v2", frames)
    return np.array(voice.infer(content, None, pitch, f0, 1, deterministic=True))


def _variant(tmp_path, voice_file, name="variant.pth", **changes):
    """The test voice re-saved with top-level entries replaced, deleted (None) or edited (a callable)."""
    ckpt = torch.load(voice_file[0], weights_only=False)
    for key, value in changes.items():
        if value is None:
            ckpt.pop(key, None)
        elif callable(value):
            ckpt[key] = value(ckpt[key])
        else:
            ckpt[key] = value
    path = tmp_path / name
    torch.save(ckpt, path)
    return path


def test_read_voice_config_and_layouts(voice_file):
    path, ref, config = voice_file
    cfg, weights = read_voice(path)
    assert cfg == VoiceConfig.from_rvc(config, "v2", 1)
    assert (cfg.version, cfg.f0, cfg.sample_rate, cfg.hop_length, cfg.spk_embed_dim) == (
        "v2",
        True,
        40000,
        400,
        3,
    )
    assert cfg.to_rvc() == config
    assert not any(k.startswith("enc_q.") or "weight_g" in k or "weight_v" in k for k in weights)
    assert all(w.dtype == np.float32 and w.flags.c_contiguous for w in weights.values())

    state = {k: v.float() for k, v in torch.load(path)["weight"].items()}
    up = torch._weight_norm(
        state["dec.ups.0.weight_v"], state["dec.ups.0.weight_g"], 0
    ).numpy()  # (C_in, C_out, K)
    np.testing.assert_allclose(weights["dec.ups.0.weight"], up.transpose(1, 2, 0), rtol=1e-6, atol=1e-7)
    conv = torch._weight_norm(
        state["dec.resblocks.4.convs1.2.weight_v"], state["dec.resblocks.4.convs1.2.weight_g"], 0
    ).numpy()  # (C_out, C_in, K)
    np.testing.assert_allclose(
        weights["dec.resblocks.4.convs1.2.weight"], conv.transpose(0, 2, 1), rtol=1e-6, atol=1e-7
    )
    np.testing.assert_array_equal(
        weights["enc_p.encoder.attn_layers.0.emb_rel_k"], state["enc_p.encoder.attn_layers.0.emb_rel_k"]
    )
    np.testing.assert_array_equal(
        weights["dec.conv_pre.weight"], state["dec.conv_pre.weight"].numpy().transpose(0, 2, 1)
    )


def test_parametrizations_weight_norm_names(voice_file, tmp_path):
    """Newer exports name weight norm `parametrizations.weight.original0/1`: same voice, same output."""
    up = torch.nn.utils.parametrizations.weight_norm(torch.nn.ConvTranspose1d(6, 4, 16, 10, padding=3))
    conv = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(4, 5, 3, dilation=3, padding=3))
    with torch.no_grad():
        for m in (up, conv):
            m.parametrizations.weight.original0.uniform_(0.5, 1.5)
    state = {f"dec.ups.0.{k}": v.numpy() for k, v in up.state_dict().items()}
    state.update({f"dec.resblocks.0.convs1.1.{k}": v.numpy() for k, v in conv.state_dict().items()})
    out = convert_state_dict(state)
    assert set(out) == {
        "dec.ups.0.weight",
        "dec.ups.0.bias",
        "dec.resblocks.0.convs1.1.weight",
        "dec.resblocks.0.convs1.1.bias",
    }
    np.testing.assert_allclose(
        out["dec.ups.0.weight"], up.weight.detach().numpy().transpose(1, 2, 0), rtol=1e-6, atol=1e-7
    )
    np.testing.assert_allclose(
        out["dec.resblocks.0.convs1.1.weight"],
        conv.weight.detach().numpy().transpose(0, 2, 1),
        rtol=1e-6,
        atol=1e-7,
    )

    def rename(weight):
        names = {
            ".weight_g": ".parametrizations.weight.original0",
            ".weight_v": ".parametrizations.weight.original1",
        }
        out = {}
        for k, v in weight.items():
            for old, new in names.items():
                k = k[: -len(old)] + new if k.endswith(old) else k
            out[k] = v
        return out

    renamed = _variant(tmp_path, voice_file, weight=rename)
    np.testing.assert_array_equal(
        _infer(load_voice(renamed), voice_file[2]), _infer(load_voice(voice_file[0]), voice_file[2])
    )


def test_native_round_trip_and_info(voice_file, tmp_path):
    path, _, config = voice_file
    native = tmp_path / "voice.safetensors"
    cfg = convert_voice(path, native)
    from_pth, from_native = load_voice(path), load_voice(native)
    assert from_native.config == cfg == from_pth.config
    np.testing.assert_array_equal(_infer(from_native, config), _infer(from_pth, config))

    info_pth, info_native = voice_info(path), voice_info(native)
    assert info_pth["format"] == "rvc-pth" and info_native["format"] == "rvc-mlx"
    for info in (info_pth, info_native):
        assert {
            k: info[k] for k in ("version", "f0", "sample_rate", "speakers", "hop_length", "vocoder", "info")
        } == {
            "version": "v2",
            "f0": True,
            "sample_rate": 40000,
            "speakers": 3,
            "hop_length": 400,
            "vocoder": "HiFi-GAN",
            "info": "0epoch",
        }
    n_params = sum(int(np.prod(v.shape)) for _, v in tree_flatten(from_pth.parameters()))
    assert info_pth["parameters"] == info_native["parameters"] == n_params
    with pytest.raises(CheckpointError, match="overwrite"):
        convert_voice(path, path)


def test_extra_keys_and_speaker_count(voice_file, tmp_path):
    """Applio-style extra entries are ignored, enc_q weights dropped, the speaker count comes from emb_g."""
    path = _variant(
        tmp_path,
        voice_file,
        vocoder="HiFi-GAN",
        speakers_id=0,
        embedder_model="contentvec",
        sr="40k",
        config=lambda c: c[:15] + [109] + c[16:17] + ["40k"],
        weight=lambda w: {**w, "enc_q.pre.weight": torch.zeros(4, 4, 1, dtype=torch.float16)},
    )
    cfg, _ = read_voice(path)
    assert (cfg.spk_embed_dim, cfg.sample_rate) == (3, 40000)
    np.testing.assert_array_equal(
        _infer(load_voice(path), voice_file[2]), _infer(load_voice(voice_file[0]), voice_file[2])
    )


@pytest.mark.parametrize("vocoder", ["RefineGAN", "MRF HiFi-GAN"])
def test_unsupported_vocoder(voice_file, tmp_path, vocoder):
    path = _variant(tmp_path, voice_file, vocoder=vocoder)
    with pytest.raises(CheckpointError, match="unsupported vocoder") as e:
        load_voice(path)
    assert e.value.path == str(path)


def _shrink_first_layer(weight):
    weight = dict(weight)
    weight["enc_p.emb_phone.weight"] = weight["enc_p.emb_phone.weight"][:, :256]
    return weight


BAD = {
    "no weight": ({"weight": None}, "no 'weight'"),
    "no config": ({"config": None}, "no 'config'"),
    "weight not a dict": ({"weight": [1, 2]}, "expected a state dict"),
    "config too short": ({"config": lambda c: c[:17]}, "17 items, expected 18"),
    "config not a list": ({"config": "40k"}, "expected a list"),
    "bad resblock": ({"config": lambda c: c[:9] + ["3"] + c[10:]}, "resblock"),
    "bad sample rate": ({"config": lambda c: c[:17] + ["44k"]}, "sample rate"),
    "unknown version": ({"version": "v3"}, "unknown version 'v3'"),
    "bad f0 flag": ({"f0": 2}, "'f0' must be 0 or 1"),
    "wrong shape": ({"weight": _shrink_first_layer}, r"shape mismatch: enc_p.emb_phone.weight \(32, 256\)"),
    "missing weight": (
        {"weight": lambda w: {k: v for k, v in w.items() if k != "dec.conv_post.weight"}},
        "missing weights: dec.conv_post.weight",
    ),
    "unexpected weight": (
        {"weight": lambda w: {**w, "dec.extra.weight": torch.zeros(3)}},
        "unexpected weights: dec.extra.weight",
    ),
    "lonely weight_g": (
        {"weight": lambda w: {k: v for k, v in w.items() if k != "dec.ups.1.weight_v"}},
        "'dec.ups.1.weight_g' lacks",
    ),
    "non-tensor weight": ({"weight": lambda w: {**w, "emb_g.weight": "oops"}}, "not a numeric tensor"),
    "v1 file with v2 weights": ({"version": "v1"}, "enc_p.emb_phone.weight"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_checkpoints_raise_one_clear_error(voice_file, tmp_path, case):
    changes, message = BAD[case]
    path = _variant(tmp_path, voice_file, **changes)
    with pytest.raises(CheckpointError, match=message) as e:
        load_voice(path)
    assert e.value.path == str(path)


def test_not_a_dict_and_not_a_checkpoint(tmp_path):
    listed = tmp_path / "list.pth"
    torch.save([1, 2, 3], listed)
    with pytest.raises(CheckpointError, match="holds a list"):
        load_voice(listed)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_voice(garbage)
    training = tmp_path / "G_100.pth"
    torch.save({"model": {}, "iteration": 100}, training)
    with pytest.raises(CheckpointError, match="training checkpoint"):
        load_voice(training)


def test_loading_and_inference_do_not_import_torch(voice_file):
    code = (
        "import sys, numpy as np, rvc_mlx\n"
        "from rvc_mlx.checkpoints.voice import load_voice\n"
        f"voice = load_voice({str(voice_file[0])!r})\n"
        "t = 8\n"
        "out = voice.infer(np.zeros((1, t, 768), np.float32), None, np.full((1, t), 50),"
        " np.full((1, t), 100.0), deterministic=True)\n"
        "print(out.shape, 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "(1, 3200) False"


def test_inference_output_is_float32(voice_file):
    voice = load_voice(voice_file[0])
    assert all(v.dtype == mx.float32 for _, v in tree_flatten(voice.parameters()))
