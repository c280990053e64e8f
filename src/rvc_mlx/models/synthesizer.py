"""The RVC synthesizer on MLX: one `Synthesizer(config)` for v1/v2 content × pitch/no-pitch voices.

Equals upstream `SynthesizerTrnMs256NSFsid`, `..._nono`, `SynthesizerTrnMs768NSFsid`, `..._nono` (rvc 0.3.5)
at inference: `enc_p` (content [+ coarse pitch] -> prior m, logs), z_p = m + exp(logs)·ε·0.66666, `flow` in
reverse, then the HiFi-GAN `dec` (NSF for pitch voices) conditioned on the speaker embedding `emb_g`.
Tensors are channels-last; parameter names equal the upstream state-dict names (minus the training-only
posterior encoder `enc_q`), so loading a converted checkpoint is a strict name-for-name match.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import mlx.core as mx
import mlx.nn as nn

from rvc_mlx.errors import CheckpointError
from rvc_mlx.models.flow import ResidualCouplingBlock
from rvc_mlx.models.generator import Generator
from rvc_mlx.models.text_encoder import PITCH_BINS, TextEncoder

SAMPLE_RATE_NAMES = {"32k": 32000, "40k": 40000, "48k": 48000}  # RVC's names for its sample rates
CONTENT_CHANNELS = {"v1": 256, "v2": 768}  # content-feature width per RVC version (HuBERT layer 9 / 12)
LATENT_NOISE_SCALE = 0.66666  # RVC's temperature on the prior sample


def parse_sample_rate(value, path: str | os.PathLike | None = None) -> int:
    """RVC's `sr` ("40k", 40000, "40000") -> Hz; CheckpointError for anything else."""
    rate = None
    if isinstance(value, str):
        text = value.strip()
        rate = SAMPLE_RATE_NAMES.get(text, int(text) if text.isdigit() else None)
    elif isinstance(value, int) and not isinstance(value, bool):
        rate = value
    elif isinstance(value, float) and value.is_integer():
        rate = int(value)
    if rate is None or not 8000 <= rate <= 192000:
        raise CheckpointError(path, f"unknown sample rate {value!r}")
    return rate


@dataclass(frozen=True)
class VoiceConfig:
    """An RVC voice's architecture, decoded from the checkpoint's 18-item `config` list (+ version, f0)."""

    spec_channels: int  # linear-spectrogram bins of the training posterior encoder (unused at inference)
    segment_size: int  # training slice length, frames (unused at inference)
    inter_channels: int  # latent z channels
    hidden_channels: int  # width of the text encoder and of the flow's WaveNets
    filter_channels: int  # inner width of the text encoder's FFNs
    n_heads: int  # attention heads of the text encoder
    n_layers: int  # transformer layers of the text encoder
    kernel_size: int  # kernel of the text encoder's FFN convolutions, frames
    p_dropout: float  # training dropout (unused at inference)
    resblock: str  # HiFi-GAN residual block type, "1" or "2"
    resblock_kernel_sizes: tuple[int, ...]  # kernel of each parallel residual block
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]  # dilations inside each residual block
    upsample_rates: tuple[int, ...]  # stride of each HiFi-GAN upsampling stage; product = hop_length
    upsample_initial_channel: int  # channels before the first upsampling (halved per stage)
    upsample_kernel_sizes: tuple[int, ...]  # kernel of each upsampling transposed conv
    spk_embed_dim: int  # number of speakers (rows of emb_g)
    gin_channels: int  # speaker embedding width
    sample_rate: int  # output sample rate, Hz
    version: str = "v1"  # "v1": 256-d content features, "v2": 768-d
    f0: bool = True  # pitch-guided voice (NSF decoder, coarse pitch embedding)

    RVC_FIELDS: ClassVar[tuple[str, ...]] = (
        "spec_channels",
        "segment_size",
        "inter_channels",
        "hidden_channels",
        "filter_channels",
        "n_heads",
        "n_layers",
        "kernel_size",
        "p_dropout",
        "resblock",
        "resblock_kernel_sizes",
        "resblock_dilation_sizes",
        "upsample_rates",
        "upsample_initial_channel",
        "upsample_kernel_sizes",
        "spk_embed_dim",
        "gin_channels",
        "sample_rate",
    )  # the order of RVC's positional `config` list

    @classmethod
    def from_rvc(
        cls,
        config: Sequence,
        version: str = "v1",
        f0: int | bool = 1,
        speakers: int | None = None,
        path: str | os.PathLike | None = None,
    ) -> VoiceConfig:
        """Decode RVC's `config` list; `speakers` (emb_g rows) overrides its speaker count as RVC does.

        Every problem raises CheckpointError(path, ...) saying which item is wrong.
        """
        if not isinstance(config, list | tuple):
            raise CheckpointError(path, f"'config' is a {type(config).__name__}, expected a list of 18 items")
        if len(config) != len(cls.RVC_FIELDS):
            raise CheckpointError(path, f"'config' has {len(config)} items, expected {len(cls.RVC_FIELDS)}")
        if version not in CONTENT_CHANNELS:
            raise CheckpointError(path, f"unknown version {version!r} (expected 'v1' or 'v2')")
        if f0 not in (0, 1) or not isinstance(f0, int | bool):
            raise CheckpointError(path, f"'f0' must be 0 or 1, got {f0!r}")
        raw = dict(zip(cls.RVC_FIELDS, config, strict=True))

        def integer(name: str, minimum: int = 1) -> int:
            value = raw[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise CheckpointError(
                    path, f"config item {name!r} must be an integer >= {minimum}, got {value!r}"
                )
            return value

        def int_tuple(value, name: str) -> tuple[int, ...]:
            if (
                not isinstance(value, list | tuple)
                or not value
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
            ):
                raise CheckpointError(
                    path, f"config item {name!r} must be a list of positive integers, got {value!r}"
                )
            return tuple(value)

        fields = {
            name: integer(name)
            for name in (
                "inter_channels",
                "hidden_channels",
                "filter_channels",
                "n_heads",
                "n_layers",
                "kernel_size",
                "upsample_initial_channel",
                "gin_channels",
            )
        }
        fields["spec_channels"] = integer("spec_channels", 0)
        fields["segment_size"] = integer("segment_size", 0)
        if speakers is None:
            speakers = integer("spk_embed_dim")
        fields["spk_embed_dim"] = speakers
        try:
            fields["p_dropout"] = float(raw["p_dropout"])
        except (TypeError, ValueError):
            raise CheckpointError(
                path, f"config item 'p_dropout' is not a number: {raw['p_dropout']!r}"
            ) from None
        resblock = str(raw["resblock"])
        if resblock not in ("1", "2"):
            raise CheckpointError(path, f"config item 'resblock' must be '1' or '2', got {raw['resblock']!r}")
        fields["resblock"] = resblock
        for name in ("resblock_kernel_sizes", "upsample_rates", "upsample_kernel_sizes"):
            fields[name] = int_tuple(raw[name], name)
        dilations = raw["resblock_dilation_sizes"]
        if not isinstance(dilations, list | tuple):
            raise CheckpointError(path, f"config item 'resblock_dilation_sizes' is not a list: {dilations!r}")
        fields["resblock_dilation_sizes"] = tuple(int_tuple(d, "resblock_dilation_sizes") for d in dilations)
        fields["sample_rate"] = parse_sample_rate(raw["sample_rate"], path)

        n_dil = 3 if resblock == "1" else 2
        if len(fields["resblock_dilation_sizes"]) != len(fields["resblock_kernel_sizes"]) or any(
            len(d) != n_dil for d in fields["resblock_dilation_sizes"]
        ):
            raise CheckpointError(
                path,
                f"config: resblock {resblock!r} needs {len(fields['resblock_kernel_sizes'])} dilation lists "
                f"of {n_dil}, got {raw['resblock_dilation_sizes']!r}",
            )
        if len(fields["upsample_rates"]) != len(fields["upsample_kernel_sizes"]):
            raise CheckpointError(path, "config: upsample_rates and upsample_kernel_sizes differ in length")
        if fields["upsample_initial_channel"] % 2 ** len(fields["upsample_rates"]):
            raise CheckpointError(path, "config: upsample_initial_channel is not divisible by 2^stages")
        if fields["hidden_channels"] % fields["n_heads"] or fields["inter_channels"] % 2:
            raise CheckpointError(path, "config: hidden_channels % n_heads or inter_channels % 2 is not 0")
        return cls(**fields, version=version, f0=bool(f0))

    def to_rvc(self) -> list:
        """The 18-item RVC `config` list (lists, not tuples; sample rate in Hz)."""
        out = []
        for name in self.RVC_FIELDS:
            value = getattr(self, name)
            if name == "resblock_dilation_sizes":
                value = [list(d) for d in value]
            elif isinstance(value, tuple):
                value = list(value)
            out.append(value)
        return out

    @property
    def content_channels(self) -> int:
        """Width of the content features this voice takes (256 for v1, 768 for v2)."""
        return CONTENT_CHANNELS[self.version]

    @property
    def hop_length(self) -> int:
        """Output samples per content frame."""
        return math.prod(self.upsample_rates)


class Synthesis(NamedTuple):
    """Everything `Synthesizer.synthesize` computes, channels-last."""

    audio: mx.array  # (B, T·hop_length) waveform in [−1, 1]
    z: mx.array  # (B, T, inter_channels) flow output (decoder input before masking)
    z_p: mx.array  # (B, T, inter_channels) prior sample
    m_p: mx.array  # (B, T, inter_channels) prior mean
    logs_p: mx.array  # (B, T, inter_channels) prior log-std
    mask: mx.array  # (B, T, 1) 1.0 on valid frames


class Synthesizer(nn.Module):
    """RVC synthesizer (inference only). See the module docstring; `infer` is the entry point."""

    def __init__(self, config: VoiceConfig):
        super().__init__()
        self.config = config  # architecture (not a parameter)
        c = config
        self.enc_p = TextEncoder(
            c.content_channels,
            c.inter_channels,
            c.hidden_channels,
            c.filter_channels,
            c.n_heads,
            c.n_layers,
            c.kernel_size,
            c.f0,
        )
        self.dec = Generator(
            c.inter_channels,
            c.resblock,
            c.resblock_kernel_sizes,
            c.resblock_dilation_sizes,
            c.upsample_rates,
            c.upsample_initial_channel,
            c.upsample_kernel_sizes,
            c.gin_channels,
            sample_rate=c.sample_rate if c.f0 else None,
        )
        self.flow = ResidualCouplingBlock(c.inter_channels, c.hidden_channels, c.gin_channels)
        self.emb_g = nn.Embedding(c.spk_embed_dim, c.gin_channels)

    @property
    def dtype(self) -> mx.Dtype:
        """The dtype the network computes in (its weights'; `rvc_mlx.precision.cast_model` sets it)."""
        return self.enc_p.emb_phone.weight.dtype

    def synthesize(
        self,
        content: mx.array,
        lengths: mx.array | None = None,
        pitch: mx.array | None = None,
        f0_hz: mx.array | None = None,
        speaker_id: int | mx.array = 0,
        *,
        noise: mx.array | None = None,
        sine_noise: mx.array | None = None,
        rand_phase: mx.array | None = None,
        deterministic: bool = False,
        key: mx.array | None = None,
    ) -> Synthesis:
        """Run the voice; like `infer` but returning the latents too."""
        c = self.config
        dtype = self.dtype
        content = mx.array(content).astype(dtype)
        if content.ndim != 3 or content.shape[-1] != c.content_channels:
            raise ValueError(f"content must be (B, T, {c.content_channels}), got {tuple(content.shape)}")
        b, t, _ = content.shape
        if c.f0:
            if pitch is None or f0_hz is None:
                raise ValueError("this voice is pitch-guided (f0=1): pass pitch and f0_hz")
            pitch, f0_hz = mx.array(pitch).astype(mx.int32), mx.array(f0_hz).astype(mx.float32)
            if tuple(pitch.shape) != (b, t) or tuple(f0_hz.shape) != (b, t):
                raise ValueError(
                    f"pitch and f0_hz must be (B, T) = {(b, t)}, got {pitch.shape}, {f0_hz.shape}"
                )
            if int(mx.min(pitch)) < 0 or int(mx.max(pitch)) >= PITCH_BINS:
                raise ValueError(f"coarse pitch must be in [0, {PITCH_BINS})")
        elif pitch is not None or f0_hz is not None:
            raise ValueError("this voice has no pitch input (f0=0): pass pitch=None, f0_hz=None")
        if lengths is not None:
            lengths = mx.array(lengths).astype(mx.int32).reshape(b)
        sid = mx.array(speaker_id).astype(mx.int32).reshape(-1)
        if sid.size == 1:
            sid = mx.broadcast_to(sid, (b,))
        if sid.size != b or int(mx.min(sid)) < 0 or int(mx.max(sid)) >= c.spk_embed_dim:
            raise ValueError(f"speaker_id must be in [0, {c.spk_embed_dim}) (one or one per batch item)")

        noise, sine_noise, rand_phase = (
            None if a is None else mx.array(a).astype(mx.float32) for a in (noise, sine_noise, rand_phase)
        )
        if deterministic:
            noise = mx.zeros((b, t, c.inter_channels), dtype) if noise is None else noise
        elif noise is None or (c.f0 and sine_noise is None) or (c.f0 and rand_phase is None):
            keys = mx.random.split(key, 3) if key is not None else [None] * 3
            if noise is None:
                noise = mx.random.normal((b, t, c.inter_channels), key=keys[0])
            if c.f0 and sine_noise is None:
                sine_noise = mx.random.normal((b, t * c.hop_length), key=keys[1])
            if c.f0 and rand_phase is None:
                rand_phase = mx.random.uniform(shape=(b, 1), key=keys[2])
        if tuple(noise.shape) != (b, t, c.inter_channels):
            raise ValueError(f"noise must be (B, T, {c.inter_channels}), got {tuple(noise.shape)}")
        noise = noise.astype(dtype)

        g = self.emb_g(sid)[:, None, :]  # (B, 1, gin)
        m_p, logs_p, mask = self.enc_p(content, pitch, lengths)
        z_p = (m_p + mx.exp(logs_p) * noise * LATENT_NOISE_SCALE) * mask
        z = self.flow.reverse(z_p, mask, g)
        audio = self.dec(z * mask, g, f0_hz, sine_noise, rand_phase)  # (B, T·hop, 1)
        return Synthesis(audio[..., 0].astype(mx.float32), z, z_p, m_p, logs_p, mask)

    def infer(
        self,
        content: mx.array,
        lengths: mx.array | None = None,
        pitch: mx.array | None = None,
        f0_hz: mx.array | None = None,
        speaker_id: int | mx.array = 0,
        *,
        noise: mx.array | None = None,
        sine_noise: mx.array | None = None,
        rand_phase: mx.array | None = None,
        deterministic: bool = False,
        key: mx.array | None = None,
    ) -> mx.array:
        """Convert content features to a waveform: -> (B, T·hop_length) float32 in [−1, 1].

        content: (B, T, 256 | 768) features at frame rate; lengths: (B,) valid frames (None: all T);
        pitch: (B, T) coarse pitch in [1, 255] and f0_hz: (B, T) f0 in Hz (0 = unvoiced), both for pitch
        voices only; speaker_id: int or (B,) ints.
        Random draws, each drawn with `mx.random` (from `key` when given) unless passed in:
        noise (B, T, inter_channels) standard normal for the prior sample; sine_noise (B, T·hop_length)
        standard normal for the NSF source; rand_phase (B, 1) uniform initial phase (upstream zeroes the
        fundamental's, so it has no effect). deterministic=True makes every draw not passed in zero.
        """
        return self.synthesize(
            content,
            lengths,
            pitch,
            f0_hz,
            speaker_id,
            noise=noise,
            sine_noise=sine_noise,
            rand_phase=rand_phase,
            deterministic=deterministic,
            key=key,
        ).audio
