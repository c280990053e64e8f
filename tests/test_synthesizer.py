"""Synthesizer parity with the PyTorch reference (rvc 0.3.5 `SynthesizerTrnMs{256,768}NSFsid[_nono].infer`).

Reference voices get random weights (weight-norm g and v drawn independently, zero-initialised layers filled),
are saved with `torch.save` in RVC's export layout (float16 `weight` without `enc_q`, `config`, `f0`,
`version`, `sr`, `info`), read back through our torch-free reader, and compared with the reference loaded with
the same float16-rounded weights in float32, on the same inputs and the same random draws (the reference's
`torch.randn_like` is patched to hand out our arrays). Widths are reduced where that keeps the structure
(upsample rates/kernels, resblock kernels/dilations, layer and head counts are the real ones); one case runs
at the real v2 40k size.

Tolerance: max|ours − ref| <= 1e-4 · max|ref| for the waveform, the prior mean/log-std and the flow output.
"""

from __future__ import annotations

import rvc_mlx  # noqa: F401  (loads OpenBLAS before mlx.core)

# isort: split
import mlx.core as mx
import numpy as np
import pytest
import torch
from conftest import rel_err
from rvc.lib.infer_pack import models as ref_models

from rvc_mlx.checkpoints.voice import load_voice
from rvc_mlx.models import flow, text_encoder
from rvc_mlx.models.activations import tanh_arith
from rvc_mlx.models.conv import conv_impl
from rvc_mlx.models.generator import ChunkPlan
from rvc_mlx.models.nsf_source import sine_source

TOL = 1e-4
pytestmark = pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")  # the reference's weight_norm

# RVC's upsampling per (version, sample rate): rates and kernels of the released configs
UPSAMPLING = {
    ("v1", 32000): ([10, 4, 2, 2, 2], [16, 16, 4, 4, 4]),
    ("v1", 40000): ([10, 10, 2, 2], [16, 16, 4, 4]),
    ("v1", 48000): ([10, 6, 2, 2, 2], [16, 16, 4, 4, 4]),
    ("v2", 32000): ([10, 8, 2, 2], [20, 16, 4, 4]),
    ("v2", 40000): ([10, 10, 2, 2], [16, 16, 4, 4]),
    ("v2", 48000): ([12, 10, 2, 2], [24, 20, 4, 4]),
}
CLASSES = {
    ("v1", 1): ref_models.SynthesizerTrnMs256NSFsid,
    ("v1", 0): ref_models.SynthesizerTrnMs256NSFsid_nono,
    ("v2", 1): ref_models.SynthesizerTrnMs768NSFsid,
    ("v2", 0): ref_models.SynthesizerTrnMs768NSFsid_nono,
}


def rvc_config(version: str, sample_rate: int, full: bool = False, resblock: str = "1") -> list:
    """RVC's 18-item config; `full` = the released widths, else reduced widths with the real structure."""
    rates, kernels = UPSAMPLING[(version, sample_rate)]
    kernel_sizes, dilations = ([3, 7, 11], [[1, 3, 5]] * 3) if resblock == "1" else ([3, 7], [[1, 3], [1, 3]])
    # inter, hidden, filter channels, upsample_initial_channel, speakers, gin_channels
    inter, hidden, filt, uic, speakers, gin = (
        (192, 192, 768, 512, 109, 256) if full else (16, 32, 64, 64, 3, 16)
    )
    spec = 513 if sample_rate == 32000 else 1025
    head = [spec, 32, inter, hidden, filt, 2, 6, 3, 0]  # n_heads 2, n_layers 6, kernel 3, dropout 0
    return head + [resblock, kernel_sizes, dilations, rates, uic, kernels, speakers, gin, sample_rate]


def _randomize(net: torch.nn.Module, seed: int) -> None:
    """Weights that make every path matter: g and v independent, zero-initialised layers filled."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            n = torch.randn(p.shape, generator=gen)
            if name.endswith("weight_g"):
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
            elif name.endswith("weight_v") or (name.endswith("weight") and p.ndim == 3):
                p.copy_(n / p[0].numel() ** 0.5)
            elif name.endswith(("bias", "beta")):
                p.copy_(0.1 * n)
            elif name.endswith("gamma"):
                p.copy_(1 + 0.1 * n)
            elif "emb_phone" in name:
                p.copy_(n / p.shape[1] ** 0.5)
            else:  # embeddings, relative-position tables, l_linear
                p.copy_(0.3 * n)


def make_voice(
    path,
    version: str,
    f0: int,
    sample_rate: int,
    full: bool = False,
    seed: int = 0,
    resblock: str = "1",
    extra: dict | None = None,
):
    """Write an RVC-layout voice to `path` -> (the reference with the float16-rounded weights, config)."""
    config = rvc_config(version, sample_rate, full, resblock)
    net = CLASSES[(version, f0)](*config, is_half=False)
    _randomize(net, seed)
    weight = {k: v.half() for k, v in net.state_dict().items() if not k.startswith("enc_q.")}
    ckpt = {
        "weight": weight,
        "config": config,
        "info": "0epoch",
        "sr": f"{sample_rate // 1000}k",
        "f0": f0,
        "version": version,
        **(extra or {}),
    }
    torch.save(ckpt, path)
    ref = CLASSES[(version, f0)](*config, is_half=False)
    del ref.enc_q
    ref.load_state_dict({k: v.float() for k, v in weight.items()})
    return ref.eval(), config


def make_inputs(config: list, version: str, frames: int, batch: int = 1, seed: int = 1, random_draws=False):
    """Content features, coarse pitch, f0 (with an unvoiced stretch), latent and source noise."""
    rng = np.random.default_rng(seed)
    hop = int(np.prod(config[12]))
    content = rng.standard_normal((batch, frames, 256 if version == "v1" else 768)).astype(np.float32)
    t = np.arange(frames)
    f0 = np.stack([150 + 100 * np.sin(t / 5 + b) + rng.uniform(-3, 3, frames) for b in range(batch)])
    f0[:, 5:9] = 0.0
    f0 = f0.astype(np.float32)
    pitch = np.clip(np.round(f0 / 2.0), 1, 255).astype(np.int64)
    if random_draws:
        noise = rng.standard_normal((batch, frames, config[2])).astype(np.float32)
        sine_noise = rng.standard_normal((batch, frames * hop)).astype(np.float32)
    else:
        noise = np.zeros((batch, frames, config[2]), np.float32)
        sine_noise = np.zeros((batch, frames * hop), np.float32)
    return content, pitch, f0, noise, sine_noise


def run_reference(ref, f0_flag, content, lengths, pitch, f0, speakers, noise, sine_noise, monkeypatch):
    """The reference's infer with our draws injected -> numpy audio (B, N), z, m_p, logs_p (channels-last)."""
    z_shape = (noise.shape[0], noise.shape[2], noise.shape[1])
    draws = {
        z_shape: torch.from_numpy(noise.transpose(0, 2, 1).copy()),
        sine_noise.shape + (1,): torch.from_numpy(sine_noise[..., None].copy()),
    }

    def randn_like(x, *args, **kwargs):
        return draws[tuple(x.shape)].clone()

    monkeypatch.setattr(torch, "randn_like", randn_like)
    args = (torch.from_numpy(content), torch.from_numpy(lengths))
    if f0_flag:
        args += (torch.from_numpy(pitch), torch.from_numpy(f0))
    with torch.no_grad():
        o, _, (z, _, m_p, logs_p) = ref.infer(*args, torch.from_numpy(speakers))
    monkeypatch.undo()
    nlc = lambda a: a.numpy().transpose(0, 2, 1)  # noqa: E731
    return o[:, 0].numpy(), nlc(z), nlc(m_p), nlc(logs_p)


def check_parity(
    tmp_path,
    monkeypatch,
    version,
    f0_flag,
    sample_rate,
    *,
    full=False,
    frames=30,
    batch=1,
    random_draws=False,
    resblock="1",
    impl="auto",
    chunk_plan=None,
    gpu_chunk_plan="default",
):
    path = tmp_path / "voice.pth"
    ref, config = make_voice(path, version, f0_flag, sample_rate, full=full, resblock=resblock)
    content, pitch, f0, noise, sine_noise = make_inputs(
        config, version, frames, batch, random_draws=random_draws
    )
    lengths = np.array([frames - 7 * b for b in range(batch)], dtype=np.int64)
    speakers = np.arange(batch, dtype=np.int64) % config[15]
    want = run_reference(ref, f0_flag, content, lengths, pitch, f0, speakers, noise, sine_noise, monkeypatch)

    voice = load_voice(path)
    if chunk_plan is not None:
        voice.dec.chunk_plan = chunk_plan
    if gpu_chunk_plan != "default":
        voice.dec.gpu_chunk_plan = gpu_chunk_plan
    with conv_impl(impl):
        got = voice.synthesize(
            content,
            lengths,
            pitch if f0_flag else None,
            f0 if f0_flag else None,
            speakers,
            noise=mx.array(noise),
            sine_noise=mx.array(sine_noise) if f0_flag else None,
            rand_phase=mx.zeros((batch, 1)) if f0_flag else None,
        )
        mx.eval(got.audio)
    errors = {
        "audio": rel_err(got.audio, want[0]),
        "z": rel_err(got.z, want[1]),
        "m_p": rel_err(got.m_p, want[2]),
        "logs_p": rel_err(got.logs_p, want[3]),
    }
    print(
        f"{version} f0={f0_flag} {sample_rate} full={full} B={batch} draws={random_draws} {impl}:",
        " ".join(f"{k} {v:.2e}" for k, v in errors.items()),
    )
    assert np.abs(want[0]).max() < 0.99  # not saturated by tanh: the comparison can see errors
    assert all(v <= TOL for v in errors.values()), errors
    return voice, (content, lengths, pitch, f0, speakers, noise, sine_noise), want


@pytest.mark.parametrize("sample_rate", [32000, 40000, 48000])
@pytest.mark.parametrize("version,f0_flag", [("v1", 1), ("v1", 0), ("v2", 1), ("v2", 0)])
def test_parity_all_classes_and_rates(tmp_path, monkeypatch, version, f0_flag, sample_rate):
    check_parity(tmp_path, monkeypatch, version, f0_flag, sample_rate)


@pytest.mark.parametrize("impl", ["gemm", "mlx"])
def test_parity_random_draws_batch_and_both_conv_paths(tmp_path, monkeypatch, impl):
    """Injected random latent and source noise, two items of different lengths and speakers."""
    check_parity(tmp_path, monkeypatch, "v1", 1, 48000, batch=2, random_draws=True, impl=impl)


@pytest.mark.parametrize("resblock", ["1", "2"])
def test_parity_with_many_small_chunks(tmp_path, monkeypatch, resblock):
    """The CPU path's time chunks, shorter than their halos, so that chunk seams and the signal's ends fall
    inside every layer's receptive field; two items of different lengths."""
    plan = ChunkPlan(elements=1, min_length=37)
    check_parity(tmp_path, monkeypatch, "v1", 1, 48000, batch=2, random_draws=True, resblock=resblock,
                 impl="gemm", chunk_plan=plan)


@pytest.mark.parametrize("resblock", ["1", "2"])
def test_parity_gpu_route_in_small_chunks(tmp_path, monkeypatch, resblock):
    """The other back ends' route (fixed-length chunks on one stream, the last computed past the end and cut,
    `mx.conv1d` on each piece, each chunk evaluated before the next), run here on the CPU through the "mlx"
    conv path with tiny chunks (the default plan's single bucketed chunk: the "mlx" case above)."""
    plan = ChunkPlan(elements=1, min_length=53)
    check_parity(tmp_path, monkeypatch, "v2", 1, 48000, batch=2, random_draws=True, resblock=resblock,
                 impl="mlx", gpu_chunk_plan=plan)


def test_parity_gpu_one_pass(tmp_path, monkeypatch):
    """`gpu_chunk_plan=None`: the decoder in one pass over the whole signal."""
    check_parity(tmp_path, monkeypatch, "v1", 0, 32000, impl="mlx", gpu_chunk_plan=None)


@pytest.mark.parametrize("impl", ["auto", "mlx"])
def test_parity_with_attention_blocks_and_flow_chunks(tmp_path, monkeypatch, impl):
    """Attention in blocks of 7 query rows (band and key mask cut by the blocks), on the CPU path over its
    streams, on the "mlx" path (other back ends) on one stream; on the CPU path also the FFNs and the flow in
    two time chunks (seams inside each other's context). Two items of different lengths."""
    with monkeypatch.context() as patch:
        patch.setattr(text_encoder, "QUERY_BLOCK_ELEMENTS", 1)
        patch.setattr(text_encoder, "GPU_QUERY_BLOCK_ELEMENTS", 1)
        patch.setattr(text_encoder, "QUERY_BLOCK_MIN_ROWS", 7)
        patch.setattr(flow, "MIN_CHUNK_FRAMES", 8)
        patch.setattr(text_encoder, "FFN_MIN_CHUNK_FRAMES", 8)
        check_parity(tmp_path, monkeypatch, "v2", 1, 40000, frames=60, batch=2, random_draws=True, impl=impl)


def test_parity_real_v2_40k_size(tmp_path, monkeypatch):
    check_parity(tmp_path, monkeypatch, "v2", 1, 40000, full=True, frames=20, random_draws=True)


def test_parity_resblock_type_2(tmp_path, monkeypatch):
    check_parity(tmp_path, monkeypatch, "v2", 1, 32000, resblock="2")


def test_the_comparison_sees_pitch_and_noise(tmp_path, monkeypatch):
    """A 1 % pitch error or dropping the source noise moves the output far beyond the tolerance."""
    voice, (content, lengths, pitch, f0, speakers, noise, sine_noise), want = check_parity(
        tmp_path, monkeypatch, "v2", 1, 40000, random_draws=True
    )
    off_pitch = voice.infer(
        content, lengths, pitch, f0 * 1.01, speakers, noise=mx.array(noise), sine_noise=mx.array(sine_noise)
    )
    assert rel_err(off_pitch, want[0]) > 100 * TOL
    no_source_noise = voice.infer(content, lengths, pitch, f0, speakers, noise=mx.array(noise))
    assert rel_err(no_source_noise, want[0]) > 10 * TOL


def test_deterministic_and_seeded_draws(tmp_path):
    path = tmp_path / "voice.pth"
    _, config = make_voice(path, "v1", 1, 40000)
    content, pitch, f0, noise, sine_noise = make_inputs(config, "v1", 12)
    voice = load_voice(path)
    zeros = voice.infer(content, None, pitch, f0, 0, noise=noise, sine_noise=sine_noise)  # numpy draws
    det = voice.infer(content, None, pitch, f0, 0, deterministic=True)
    assert np.array_equal(np.array(det), np.array(zeros))
    key = mx.random.key(7)
    a = voice.infer(content, None, pitch, f0, 0, key=key)
    b = voice.infer(content, None, pitch, f0, 0, key=key)
    c = voice.infer(content, None, pitch, f0, 0, key=mx.random.key(8))
    assert np.array_equal(np.array(a), np.array(b))
    assert rel_err(c, a) > 1e-3 and rel_err(a, det) > 1e-3
    with pytest.raises(ValueError, match="speaker_id"):
        voice.infer(content, None, pitch, f0, 5, deterministic=True)
    with pytest.raises(ValueError, match="pitch"):
        voice.infer(content, deterministic=True)
    with pytest.raises(ValueError, match="coarse pitch"):
        voice.infer(content, None, pitch + 300, f0, 0, deterministic=True)


@pytest.mark.parametrize("harmonics,exact", [(0, True), (1, True), (0, False)])
def test_sine_source_matches_sinegen_on_long_input(monkeypatch, harmonics, exact):
    """The excitation alone over 2000 frames × 400 samples (float32 running sums would drift ~1e-3 cycles).

    exact: the reference's float64 running sums (CPU default); else float64 only per frame (GPU default),
    checked for RVC's source (no overtones; an overtone's random start phase lets the reference's phase run
    to ~300 cycles, where float32 ulps differ by 3e-5).
    """
    rng = np.random.default_rng(3)
    frames, upp, sample_rate = 2000, 400, 40000
    f0 = 200 + 150 * np.sin(np.arange(frames) / 37) + rng.uniform(-5, 5, frames)
    f0[100:180] = 0.0
    f0[1500:1510] = 1900.0  # several wraps per frame
    f0 = f0[None].astype(np.float32)
    noise = rng.standard_normal((1, frames * upp, harmonics + 1)).astype(np.float32)
    phase = rng.uniform(size=(1, harmonics + 1)).astype(np.float32)
    monkeypatch.setattr(torch, "randn_like", lambda x, *a, **k: torch.from_numpy(noise))
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.from_numpy(phase.copy()))
    with torch.no_grad():
        want = ref_models.SineGen(sample_rate, harmonic_num=harmonics)(torch.from_numpy(f0), upp)[0].numpy()
    got = sine_source(
        mx.array(f0), upp, sample_rate, mx.array(noise), mx.array(phase), harmonics=harmonics, exact=exact
    )
    err = rel_err(got, want)
    print(f"sine source, {harmonics} harmonics, exact={exact}: rel err {err:.2e}")
    assert err <= (1e-6 if exact else 2e-5)


def test_arithmetic_tanh_within_float32_ulps():
    """The flow's CPU tanh against float64: dense over [-12, 12], log-spaced down to 1e-30, signed zeros."""
    x = np.concatenate([np.linspace(-12, 12, 400_001), np.geomspace(1e-30, 50, 100_000)])
    x = np.concatenate([x, -x, [0.0, -0.0, 1e4, -1e4]]).astype(np.float32)
    want = np.tanh(x.astype(np.float64))
    got = np.array(tanh_arith(mx.array(x))).astype(np.float64)
    ulps = np.abs(got - want) / np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    print(f"arithmetic tanh: max {ulps.max():.2f} ulp")
    assert ulps.max() <= 2.5
    assert np.array_equal(np.signbit(got[-4:-2]), [False, True])
