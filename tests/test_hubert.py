"""HuBERT / ContentVec content encoder vs transformers' `HubertModel`, through every checkpoint layout.

The reference is transformers' HubertModel with random weights (fairseq, which RVC calls, is not installable
here; its post-norm base model computes the same function, and the fairseq checkpoint used below holds the
same weights under fairseq names). Index mapping, checked below: transformers' `hidden_states[0]` is the
input of layer 1 (after the encoder LayerNorm) and `hidden_states[n]` the output of layer n, which is what
fairseq's `extract_features(output_layer=n)` returns and our `extract_features(output_layer=n)` computes.

Most tests use a reduced model (64 conv channels, width 96, 6 heads, FFN 192) that keeps the real structure:
7 convs with base kernels/strides, the kernel-128 16-group positional conv, 12 post-norm layers. One test
runs the full-size base model. 6 heads (not base's 12) make sure each loader reads the head count.
Tolerance: max |ours - reference| <= 1e-4 on features of magnitude ~5-10.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import rvc_mlx  # noqa: F401  (loads the BLAS before mlx.core)

import mlx.core as mx  # isort: skip
import torch  # isort: skip

from rvc_mlx.checkpoints.hubert import convert_hubert, convert_transformers, load_hubert  # isort: skip
from rvc_mlx.checkpoints.native import save_native  # isort: skip
from rvc_mlx.errors import AudioError, CheckpointError  # isort: skip
from rvc_mlx.models.hubert import HubertConfig  # isort: skip

TOL = 1e-4  # max abs difference to the reference
SMALL = dict(hidden_size=96, num_hidden_layers=12, num_attention_heads=6, intermediate_size=192,
             conv_dim=(64,) * 7)
SMALL_CONV_SPEC = "[(64,10,5)] + [(64,3,2)] * 4 + [(64,2,2)] * 2"  # fairseq conv_feature_layers
PROJ = 32  # final_proj width of the reduced model (256 in RVC's hubert_base.pt)


def _transformers():
    """Import transformers with conftest's torchaudio stub hidden (transformers probes torchaudio's spec)."""
    saved = {k: sys.modules.pop(k) for k in ("torchaudio", "torchaudio.transforms") if k in sys.modules}
    try:
        import transformers
    finally:
        sys.modules.update(saved)
    return transformers


def _reference_model(seed: int, **overrides):
    """transformers HubertModel (base settings) with every weight random, norms and biases non-trivial."""
    tf = _transformers()
    config = tf.HubertConfig(**overrides)
    base_settings = (config.feat_extract_norm, config.do_stable_layer_norm, config.conv_bias)
    assert base_settings == ("group", False, False)
    torch.manual_seed(seed)
    model = tf.HubertModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif "original0" in name or "weight_g" in name:  # the positional conv's weight-norm magnitudes
                p.copy_(p.abs() * (0.5 + torch.rand_like(p)))
    return model


def _hidden_states(model, audio: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        out = model(torch.from_numpy(np.atleast_2d(audio)), output_hidden_states=True)
    states = [h.numpy() for h in out.hidden_states]
    assert np.array_equal(states[-1], out.last_hidden_state.numpy())
    return states


def _audio(seconds: float, seed: int = 1) -> np.ndarray:
    """Speech-like test signal at 16 kHz: a few harmonics with vibrato plus noise."""
    t = np.arange(int(16000 * seconds)) / 16000
    rng = np.random.default_rng(seed)
    f0 = 140 + 20 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    x = sum(np.sin(k * phase) / k for k in range(1, 6)) * 0.3 + 0.05 * rng.standard_normal(t.size)
    return x.astype(np.float32)


def _to_fairseq(state: dict) -> dict:
    """transformers HubertModel names -> fairseq names (what RVC's hubert_base.pt holds)."""
    out = {}
    for k, v in state.items():
        k = k.replace(".conv.parametrizations.weight.original0", ".conv.weight_g")
        k = k.replace(".conv.parametrizations.weight.original1", ".conv.weight_v")
        for a, b in [("pos_conv_embed.conv.", "pos_conv.0."), (".conv.weight", ".0.weight"),
                     ("feature_extractor.conv_layers.0.layer_norm.", "feature_extractor.conv_layers.0.2."),
                     ("feature_projection.layer_norm.", "layer_norm."),
                     ("feature_projection.projection.", "post_extract_proj."),
                     (".attention.", ".self_attn."), (".feed_forward.intermediate_dense.", ".fc1."),
                     (".feed_forward.output_dense.", ".fc2."), ("masked_spec_embed", "mask_emb")]:
            k = k.replace(a, b)
        if k.startswith("encoder.layers.") and ".layer_norm." in k:
            k = k.replace(".layer_norm.", ".self_attn_layer_norm.")
        out[k] = v
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The reduced reference model, its outputs, and the same weights in every file layout."""
    from omegaconf import OmegaConf

    d = tmp_path_factory.mktemp("hubert")
    model = _reference_model(0, **SMALL)
    audio = _audio(1.0)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    proj = torch.nn.Linear(SMALL["hidden_size"], PROJ)

    # (i) transformers: save_pretrained (safetensors, parametrizations names) and a ContentVec-style
    # pytorch_model.bin (old weight_g/weight_v names plus final_proj).
    model.save_pretrained(d / "hf")
    (d / "hf_bin").mkdir()
    (d / "hf_bin" / "config.json").write_text((d / "hf" / "config.json").read_text())
    bin_state = {k.replace("parametrizations.weight.original0", "weight_g")
                 .replace("parametrizations.weight.original1", "weight_v"): v for k, v in state.items()}
    bin_state.update({"final_proj.weight": proj.weight.detach(), "final_proj.bias": proj.bias.detach()})
    torch.save(bin_state, d / "hf_bin" / "pytorch_model.bin")

    # (ii) fairseq, as RVC's hubert_base.pt: half-precision weights, an omegaconf cfg, training leftovers.
    fs = {k: v.half() for k, v in _to_fairseq(state).items()}
    fs.update({"final_proj.weight": proj.weight.detach().half(), "final_proj.bias": proj.bias.detach().half(),
               "label_embs_concat": torch.randn(504, PROJ).half()})
    cfg = OmegaConf.create({"common": {"fp16": True}, "model": {
        "_name": "hubert", "extractor_mode": "default", "encoder_layers": 12, "encoder_embed_dim": 96,
        "encoder_ffn_embed_dim": 192, "encoder_attention_heads": SMALL["num_attention_heads"],
        "activation_fn": "gelu", "layer_norm_first": False, "conv_feature_layers": SMALL_CONV_SPEC,
        "conv_bias": False, "final_dim": PROJ, "conv_pos": 128, "conv_pos_groups": 16}})
    history = [{"criterion_name": "HubertCriterion", "optimizer_name": "FairseqAdam",
                "lr_scheduler_state": {"best": None}, "num_updates": 400000}]
    torch.save({"model": fs, "cfg": cfg, "args": None, "optimizer_history": history,
                "extra_state": {"epoch": 1, "train_iterator": {"epoch": 1}}}, d / "hubert_base.pt")
    # older fairseq: argparse Namespace in "args", no cfg
    args = argparse.Namespace(encoder_attention_heads=SMALL["num_attention_heads"], layer_norm_first=False,
                              conv_feature_layers=SMALL_CONV_SPEC, extractor_mode="default")
    torch.save({"model": fs, "args": args, "cfg": None}, d / "hubert_args.pt")

    # reference of the fairseq file: the same model with its weights rounded to float16, as RVC runs it
    half_model = _reference_model(0, **SMALL)
    half_model.load_state_dict({k: v.half().float() for k, v in state.items()})
    half_proj = torch.nn.Linear(SMALL["hidden_size"], PROJ)
    half_proj.load_state_dict({k: v.half().float() for k, v in proj.state_dict().items()})

    # (iii) native
    convert_hubert(d / "hf_bin", d / "hubert.safetensors")
    return dict(dir=d, model=model, audio=audio, ref=_hidden_states(model, audio), proj=proj,
                half_ref=_hidden_states(half_model, audio), half_proj=half_proj)


def _max_diff(ours, ref) -> float:
    ours = np.array(ours)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.max(np.abs(ours - ref)))


def test_every_layer_equals_transformers(small):
    """hidden_states[n] == extract_features(output_layer=n) for n = 1..12; also the default (last layer)."""
    ours = load_hubert(small["dir"] / "hf")
    ref = small["ref"]
    assert len(ref) == 13 and ref[12].shape == (1, 49, 96)  # 1 s -> (16000 - 400) // 320 + 1 = 49 frames
    for n in range(1, 13):
        assert _max_diff(ours.extract_features(small["audio"], output_layer=n), ref[n]) <= TOL, n
    assert np.array_equal(np.array(ours.extract_features(small["audio"])),
                          np.array(ours.extract_features(small["audio"], output_layer=12)))
    assert _max_diff(ours.extract_features(small["audio"], output_layer=1), ref[0]) > 0.1  # not the input


@pytest.mark.parametrize("layout", ["hf", "hf_bin", "hubert.safetensors", "hf/model.safetensors",
                                    "hf_bin/pytorch_model.bin"])
def test_transformers_and_native_layouts(small, layout):
    ours = load_hubert(small["dir"] / layout)
    assert ours.config.num_heads == 6 and ours.config.conv_layers[0] == (64, 10, 5)
    for n in (9, 12):
        assert _max_diff(ours.extract_features(small["audio"], output_layer=n), small["ref"][n]) <= TOL
    if layout in ("hf_bin", "hubert.safetensors", "hf_bin/pytorch_model.bin"):  # ContentVec-style final_proj
        with torch.no_grad():
            ref = small["proj"](torch.from_numpy(small["ref"][9])).numpy()
        assert _max_diff(ours.content_features(small["audio"], "v1"), ref) <= TOL
    else:
        assert ours.config.final_proj_size is None
        with pytest.raises(ValueError, match="final_proj"):
            ours.content_features(small["audio"], "v1")


@pytest.mark.parametrize("name", ["hubert_base.pt", "hubert_args.pt"])
def test_fairseq_checkpoint(small, name):
    """RVC's layout: v1 = final_proj(layer 9), v2 = layer 12, against the fp16-rounded reference."""
    ours = load_hubert(small["dir"] / name)
    assert ours.config.final_proj_size == PROJ and ours.config.num_heads == 6
    ref = small["half_ref"]
    assert _max_diff(ours.content_features(small["audio"], "v2"), ref[12]) <= TOL
    with torch.no_grad():
        ref_v1 = small["half_proj"](torch.from_numpy(ref[9])).numpy()
    assert _max_diff(ours.content_features(small["audio"], "v1"), ref_v1) <= TOL


def test_lengths_and_batch(small):
    """Shortest input (400 samples = 1 frame), an odd length, and a batch of two equal to the reference."""
    ours = load_hubert(small["dir"] / "hubert.safetensors")
    assert ours.config.hop_length == 320 and ours.config.window_length == 400
    for n in (400, 719, 720, 8123):
        x = small["audio"][:n]
        ref = _hidden_states(small["model"], x)[12]
        assert ref.shape[1] == ours.config.num_frames(n) == (n - 400) // 320 + 1
        assert _max_diff(ours.extract_features(x), ref) <= TOL, n
    batch = np.stack([small["audio"][:8000], 0.5 * small["audio"][8000:16000]])
    assert _max_diff(ours.extract_features(mx.array(batch), output_layer=9),
                     _hidden_states(small["model"], batch)[9]) <= TOL


@pytest.fixture
def many_lanes(monkeypatch):
    """The CPU path with 3 lanes on short inputs and query blocks of a few rows (several per lane)."""
    from rvc_mlx.models import hubert

    streams = [mx.new_stream(mx.cpu) for _ in range(3)]
    monkeypatch.setattr(hubert, "cpu_streams", lambda: streams)
    monkeypatch.setattr(hubert, "LANE_MIN_FRAMES", 8)
    monkeypatch.setattr(hubert, "QUERY_BLOCK_ELEMENTS", 1)
    monkeypatch.setattr(hubert, "QUERY_BLOCK_MIN_ROWS", 5)
    return hubert


def test_cpu_lanes_and_plain_path(small, many_lanes):
    """The CPU path cut into 3 lanes (GroupNorm statistics shared, context at the lane edges, keys shared by
    the lanes' query blocks), a batch of two, and the plain-MLX path, all against transformers."""
    from rvc_mlx.models.conv import conv_impl, use_cpu_path

    ours = load_hubert(small["dir"] / "hubert.safetensors")
    assert use_cpu_path() and many_lanes._lane_bounds(49, many_lanes.cpu_streams()) == [0, 16, 32, 49]
    for n in (1, 6, 12):
        assert _max_diff(ours.extract_features(small["audio"], output_layer=n), small["ref"][n]) <= TOL, n
    batch = np.stack([small["audio"][:12000], 0.5 * small["audio"][4000:]])
    ref = _hidden_states(small["model"], batch)[12]
    assert ref.shape[1] == 37
    assert _max_diff(ours.extract_features(batch), ref) <= TOL
    x = small["audio"][:8123]  # 25 frames: 3 lanes of 8-9 frames, the last conv window ending early
    assert _max_diff(ours.extract_features(x), _hidden_states(small["model"], x)[12]) <= TOL
    with conv_impl("mlx"):
        assert not use_cpu_path()
        for n in (1, 12):
            assert _max_diff(ours.extract_features(small["audio"], output_layer=n), small["ref"][n]) <= TOL
        assert _max_diff(ours.extract_features(batch), ref) <= TOL


@pytest.mark.parametrize("path", ["cpu", "mlx"])
def test_full_size_base_model(path, request):
    """The real HuBERT-base size (95M parameters: 512 conv channels, 768 wide, 12 heads, FFN 3072), on the
    CPU path in 3 lanes and on the plain-MLX path."""
    from rvc_mlx.models.conv import conv_impl

    if path == "cpu":
        request.getfixturevalue("many_lanes")
    ref_model = _reference_model(3)
    audio = _audio(1.0, seed=2)
    ref = _hidden_states(ref_model, audio)
    config, weights = convert_transformers({k: v.numpy() for k, v in ref_model.state_dict().items()},
                                           ref_model.config.to_dict())
    assert config == HubertConfig()
    from rvc_mlx.checkpoints.native import load_strict
    from rvc_mlx.models.hubert import HubertModel

    ours = HubertModel(config)
    load_strict(ours, {k: mx.array(v) for k, v in weights.items()}, None)
    with conv_impl("gemm" if path == "cpu" else "mlx"):
        for n in (9, 12):
            assert _max_diff(ours.extract_features(audio, output_layer=n), ref[n]) <= TOL


def test_hubert_prefix_and_both_weight_norm_names(small):
    state = {k: v.numpy() for k, v in small["model"].state_dict().items()}
    hf_config = json.loads((small["dir"] / "hf" / "config.json").read_text())
    _, plain = convert_transformers(state, hf_config)
    prefixed = {"hubert." + k.replace("parametrizations.weight.original0", "weight_g")
                .replace("parametrizations.weight.original1", "weight_v"): v for k, v in state.items()}
    _, other = convert_transformers(prefixed, hf_config)
    assert plain.keys() == other.keys()
    assert all(np.array_equal(plain[k], other[k]) for k in plain)


def test_loading_needs_no_torch(small):
    code = ("import sys, numpy as np; from rvc_mlx.checkpoints.hubert import load_hubert; "
            "[load_hubert(p).extract_features(np.zeros(800, np.float32)) for p in sys.argv[1:]]; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch imported'")
    paths = [str(small["dir"] / p) for p in ("hubert_base.pt", "hubert.safetensors", "hf", "hf_bin")]
    run = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


def test_bad_audio(small):
    ours = load_hubert(small["dir"] / "hubert.safetensors")
    for bad, match in [(np.zeros(0, np.float32), "empty"), (np.zeros(399, np.float32), "at least 400"),
                       (np.zeros((1, 2, 800), np.float32), "shape"), (np.zeros(800, np.int16), "float"),
                       (mx.zeros((800,), mx.int32), "float")]:
        with pytest.raises(AudioError, match=match):
            ours.extract_features(bad)
    for value in (np.nan, np.inf, -np.inf):
        x = small["audio"].copy()
        x[1234] = value
        with pytest.raises(AudioError, match="NaN or infinite"):
            ours.extract_features(x)
    with pytest.raises(ValueError, match="output_layer"):
        ours.extract_features(small["audio"], output_layer=13)


def test_not_hubert_checkpoints(small, tmp_path):
    voice = tmp_path / "voice.pth"
    torch.save({"weight": {"enc_p.emb_phone.weight": torch.zeros(192, 768)}, "config": [1025, 32, 192],
                "info": "300epoch", "sr": "40k", "f0": 1, "version": "v2"}, voice)
    rmvpe = tmp_path / "rmvpe.pt"
    torch.save({"unet.encoder.bn.weight": torch.ones(1), "fc.0.gru.weight_ih_l0": torch.zeros(8, 4)}, rmvpe)
    other_native = tmp_path / "other.safetensors"
    save_native(other_native, {"x": np.zeros(3, np.float32)}, kind="rmvpe")
    (tmp_path / "empty_dir").mkdir()
    cases = [(voice, "RVC voice model"), (rmvpe, "not a HuBERT"), (other_native, "expected 'hubert'"),
             (tmp_path / "empty_dir", "without model.safetensors"), (tmp_path / "missing.pt", "not found")]
    for path, match in cases:
        with pytest.raises(CheckpointError, match=match):
            load_hubert(path)


def test_incomplete_or_unsupported_checkpoints(small, tmp_path):
    ckpt = torch.load(small["dir"] / "hubert_base.pt", weights_only=False)
    del ckpt["model"]["encoder.layers.3.fc2.bias"]
    torch.save(ckpt, tmp_path / "missing.pt")
    ckpt["model"]["encoder.layers.3.fc2.bias"] = torch.zeros(96)
    ckpt["model"]["encoder.layers.3.extra.weight"] = torch.zeros(3)
    torch.save(ckpt, tmp_path / "extra.pt")
    ckpt["cfg"]["model"]["layer_norm_first"] = True
    del ckpt["model"]["encoder.layers.3.extra.weight"]
    torch.save(ckpt, tmp_path / "large.pt")
    large = tmp_path / "large"
    large.mkdir()
    hf_config = json.loads((small["dir"] / "hf" / "config.json").read_text())
    (large / "config.json").write_text(json.dumps({**hf_config, "do_stable_layer_norm": True}))
    os.link(small["dir"] / "hf" / "model.safetensors", large / "model.safetensors")
    cases = [("missing.pt", "missing weight encoder.layers.3.fc2.bias"), ("extra.pt", "unexpected weights"),
             ("large.pt", "pre-norm"), ("large", "pre-norm")]
    for name, match in cases:
        with pytest.raises(CheckpointError, match=match):
            load_hubert(tmp_path / name)


def test_gelu_and_attention_kernels(rng):
    """The rational-erf GELU (float64 torch reference) and the plain path's attention against torch."""
    from rvc_mlx.models.hubert import attention, gelu

    x = np.concatenate([np.linspace(-12, 12, 20001), rng.standard_normal(10000) * 3]).astype(np.float32)
    ref = torch.nn.functional.gelu(torch.from_numpy(x).double()).numpy()
    err = np.abs(np.array(gelu(mx.array(x))) - ref)
    assert np.max(err / np.maximum(np.abs(ref), 1.0)) <= 1e-6
    q, k, v = (rng.standard_normal((2, 3, 37, 16)).astype(np.float32) * 2 for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(*map(torch.from_numpy, (q, k, v)), scale=0.3)
    for ours in (attention(mx.array(q), mx.array(k), mx.array(v), 0.3),
                 mx.fast.scaled_dot_product_attention(mx.array(q), mx.array(k), mx.array(v), scale=0.3)):
        assert _max_diff(ours, ref.numpy()) <= 1e-5


def test_inplace_numpy_kernels(rng):
    """The CPU path's in-place numpy GELU (plain and after a per-channel affine) and softmax against torch;
    the GELU equals the MLX rational form bit for bit, and both write into an MLX array's own buffer."""
    from rvc_mlx.models.activations import gelu_inplace_np, softmax_inplace_np
    from rvc_mlx.models.hubert import gelu

    x = np.concatenate([np.linspace(-12, 12, 20001), rng.standard_normal(40002) * 3]).astype(np.float32)
    x = x.reshape(-1, 3)[:, None]  # (R, 1, 3): rows over several blocks, a short channel axis
    ours = mx.array(x)
    mx.eval(ours)
    gelu_inplace_np(np.asarray(ours))  # in place: `ours` now holds GELU(x)
    assert np.array_equal(np.array(ours), np.array(gelu(mx.array(x))))
    ref = torch.nn.functional.gelu(torch.from_numpy(x).double()).numpy()
    assert np.max(np.abs(np.array(ours) - ref) / np.maximum(np.abs(ref), 1.0)) <= 1e-6
    shift, scale, bias = (rng.standard_normal(3).astype(np.float32) for _ in range(3))
    y = x.copy()
    gelu_inplace_np(y, shift, scale, bias)
    ref = torch.nn.functional.gelu(torch.from_numpy((x - shift) * scale + bias).double()).numpy()
    assert np.max(np.abs(y - ref) / np.maximum(np.abs(ref), 1.0)) <= 1e-6
    s = (rng.standard_normal((2, 3, 37, 50)) * 8).astype(np.float32)
    ours = mx.array(s)
    mx.eval(ours)
    softmax_inplace_np(np.asarray(ours))
    ref = torch.softmax(torch.from_numpy(s).double(), dim=-1).numpy()
    assert _max_diff(ours, ref) <= 1e-6 and _max_diff(ours, s) > 0.1
