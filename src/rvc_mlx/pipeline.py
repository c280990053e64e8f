"""The voice-conversion pipeline: a recording in, the same performance in the model's voice out.

Step for step as RVC's reference (rvc 0.3.5 ``Pipeline.pipeline``/``vc`` and ``VC.vc_single``):
16 kHz mono -> peak limit 0.95 -> 48 Hz zero-phase high-pass -> reflect padding of ``pad_seconds`` ->
split points for long inputs -> f0 over the padded signal, transposed, coarse pitch -> per chunk:
HuBERT features (v1: layer 9 + final_proj, v2: layer 12), retrieval blending, 2x frame repeat, ``protect``,
synthesizer, padding trimmed -> RMS envelope mix -> resampling -> peak limit 0.99.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field

import mlx.core as mx  # the package's __init__ has already loaded a fast BLAS for MLX
import numpy as np

from rvc_mlx import signal_steps as steps
from rvc_mlx.errors import AudioError, CheckpointError, RVCError

# MLX keeps freed buffers for reuse; after a conversion at most this much stays cached (a long input on a GPU
# otherwise leaves tens of GB held, measured 47 GB after 60 s conversions on an H100).
CACHE_KEEP_BYTES = 2 << 30

F0_METHODS = ("rmvpe", "fcpe", "crepe", "crepe-tiny", "pm", "harvest")


@dataclass(frozen=True)
class ConversionOptions:
    """The RVC settings of one conversion (defaults: the WebUI's single-file defaults)."""

    pitch_shift: float = 0.0  # transposition in semitones
    f0_method: str = "rmvpe"  # one of F0_METHODS
    index_rate: float = 0.75  # share of retrieved (index) features blended in, 0..1
    filter_radius: int = 3  # harvest only: median-filter its f0 when > 2
    rms_mix_rate: float = 0.25  # 1 keeps the output's loudness envelope, 0 imposes the input's
    protect: float = 0.33  # weight of retrieved/converted features on unvoiced frames; 0.5 = off
    output_sample_rate: int | None = None  # resample the result (Hz, >= 16000); None: the model's rate
    speaker_id: int = 0  # speaker of a multi-speaker model
    seed: int | None = None  # seeds the model's noise draws (latent and NSF noise)
    deterministic: bool = False  # zero every noise draw (exactly reproducible output)
    f0_curve: np.ndarray | None = field(default=None, compare=False)  # (N, 2) time s, Hz; replaces f0

    def __post_init__(self):
        if self.f0_method not in F0_METHODS:
            raise RVCError(f"f0_method {self.f0_method!r} is not one of {', '.join(F0_METHODS)}")
        if not 0.0 <= self.index_rate <= 1.0:
            raise RVCError(f"index_rate must be within 0..1, got {self.index_rate}")
        if not 0.0 <= self.rms_mix_rate <= 1.0:
            raise RVCError(f"rms_mix_rate must be within 0..1, got {self.rms_mix_rate}")
        if not 0.0 <= self.protect <= 0.5:
            raise RVCError(f"protect must be within 0..0.5, got {self.protect}")
        if self.output_sample_rate is not None and self.output_sample_rate < 16000:
            raise RVCError(f"output_sample_rate must be at least 16000 Hz, got {self.output_sample_rate}")


@dataclass(frozen=True)
class Segmentation:
    """How long inputs are cut, in seconds (RVC's fp32 ``x_pad``, ``x_query``, ``x_center``, ``x_max``)."""

    pad_seconds: int = 1  # reflect padding around the input (and each chunk's overlap)
    query_seconds: int = 6  # search this far either side of a cut for the quietest hop
    center_seconds: int = 38  # a cut every this many seconds
    max_seconds: int = 41  # inputs up to this long are converted in one piece


class VoiceConverter:
    """A voice model with its content encoder, pitch model and optional retrieval index, loaded once."""

    def __init__(self, synthesizer, hubert, *, index=None, index_mode: str = "exact", rmvpe=None,
                 segmentation: Segmentation = Segmentation(), rmvpe_padding: str = "reflect",
                 precision: str = "float32"):
        """``precision``: "float32", "float16", "bfloat16" (GPU back ends) or "auto" (`rvc_mlx.precision`);
        the models' weights are cast in place to it here, once (an RMVPE given as a path, or the models
        directory's, is loaded privately on first use and cast)."""
        from rvc_mlx.models.hubert import HubertModel
        from rvc_mlx.models.rmvpe import RMVPE
        from rvc_mlx.precision import cast_model, resolve_precision

        self.synthesizer = synthesizer
        self.config = synthesizer.config
        self.hubert: HubertModel = hubert
        self.index = index
        self.index_mode = index_mode  # "exact" k-NN, "ivf" (faiss's nprobe search in MLX) or "faiss"
        self.rmvpe = rmvpe  # an RMVPE model, a path, or None for the models directory's rmvpe.pt
        self.segmentation = segmentation
        self.rmvpe_padding = rmvpe_padding
        self.precision = resolve_precision(precision)  # "float32", "float16" or "bfloat16"
        self._rmvpe_cast = None  # a half-precision copy of the RMVPE at `rmvpe` (a path), loaded on first use
        cast_model(synthesizer, self.precision)
        cast_model(hubert, self.precision)
        if isinstance(rmvpe, RMVPE):
            cast_model(rmvpe, self.precision)
        width = hubert.config.final_proj_size if self.config.version == "v1" else hubert.config.hidden_size
        if width != self.config.content_channels:
            raise RVCError(
                f"the {self.config.version} voice model takes {self.config.content_channels}-d content "
                f"features but the content encoder gives {width}-d (a v1 model needs HuBERT's final_proj, "
                "768 -> 256; a v2 model its 768-d layer 12)")
        if index is not None and index.dim != self.config.content_channels:
            raise RVCError(f"the index holds {index.dim}-d vectors but the voice model takes "
                           f"{self.config.content_channels}-d features")

    @classmethod
    def load(cls, voice, *, hubert=None, rmvpe=None, index=None, index_mode: str = "exact",
             segmentation: Segmentation = Segmentation(), rmvpe_padding: str = "reflect",
             precision: str = "float32"):
        """Load from files: ``voice`` (.pth or native), ``hubert`` (default: models dir's
        hubert_base.pt), ``rmvpe`` (default: models dir's rmvpe.pt, loaded on first use), ``index``
        (.index; default: the vectors stored in a native voice file, if any). ``precision``: as in
        ``VoiceConverter(...)``, checked before anything is read."""
        from rvc_mlx.checkpoints.hubert import load_hubert
        from rvc_mlx.checkpoints.voice import load_voice, stored_index
        from rvc_mlx.index import FeatureIndex
        from rvc_mlx.paths import default_model_path
        from rvc_mlx.precision import resolve_precision

        resolve_precision(precision)  # a bad precision fails before the files are read
        synthesizer = load_voice(voice)
        encoder = load_hubert(hubert or default_model_path("hubert_base.pt"))
        feature_index = FeatureIndex.load(index) if index is not None else stored_index(voice)
        return cls(synthesizer, encoder, index=feature_index, index_mode=index_mode, rmvpe=rmvpe,
                   segmentation=segmentation, rmvpe_padding=rmvpe_padding, precision=precision)

    # -- public entry points -------------------------------------------------------------------

    def convert(self, audio_or_path, sample_rate: int | None = None, **options) -> tuple[np.ndarray, int]:
        """Convert a file path or a float array (with its ``sample_rate``); keyword options as in
        ``ConversionOptions``. Returns (float32 mono audio, its sample rate)."""
        opts = ConversionOptions(**options)
        if isinstance(audio_or_path, (str, os.PathLike)):
            return self.convert_file(audio_or_path, opts)
        if sample_rate is None:
            raise RVCError("convert(array) needs its sample_rate")
        from rvc_mlx.audio import RESAMPLE_QUALITY, resample

        audio = np.asarray(audio_or_path, dtype=np.float32)
        if audio.ndim == 2:  # (samples, channels)
            audio = audio.mean(axis=1)
        audio16 = resample(audio, sample_rate, steps.ANALYSIS_SAMPLE_RATE, quality=RESAMPLE_QUALITY)
        return self.convert_16k(audio16, opts)

    def convert_file(self, path, options: ConversionOptions, progress: bool = False):
        from rvc_mlx.audio import load_audio

        audio, _ = load_audio(path, sample_rate=steps.ANALYSIS_SAMPLE_RATE)
        try:
            return self.convert_16k(audio, options, progress=progress)
        except AudioError as e:
            raise AudioError(path, e.problem) from None

    def convert_16k(self, audio: np.ndarray, options: ConversionOptions, progress: bool = False):
        """Convert 16 kHz mono float audio. Returns (float32 audio, sample rate). ``progress``: a progress
        bar over the chunks of a long input (on a terminal)."""
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1 or audio.size == 0:
            raise AudioError(None, "empty audio")
        if not np.isfinite(audio).all():
            raise AudioError(None, "the audio has non-finite samples (NaN or inf)")
        if np.abs(audio).max() == 0:
            raise AudioError(None, "the audio is silent (all zeros)")
        seg = self.segmentation
        hop = steps.HOP_LENGTH
        t_pad = steps.ANALYSIS_SAMPLE_RATE * seg.pad_seconds
        if audio.shape[0] < 2 * hop * 4:
            raise AudioError(None, f"the audio is too short ({audio.shape[0] / 16000:.3f} s; at least "
                             f"{8 * hop / 16000:.2f} s is needed)")
        if options.seed is not None:
            mx.random.seed(options.seed)
        audio = steps.limit_input_peak(audio)
        filtered = steps.high_pass(audio)  # float64
        cuts = steps.split_points(filtered, query=16000 * seg.query_seconds,
                                  center=16000 * seg.center_seconds, limit=16000 * seg.max_seconds)
        padded = np.pad(filtered, (t_pad, t_pad), mode="reflect")
        p_len = padded.shape[0] // hop
        pitch = f0 = None
        if self.config.f0:
            f0 = self._f0(padded, p_len, options)
            if options.f0_curve is not None:
                f0 = steps.apply_f0_curve(f0, options.f0_curve, pad_frames=seg.pad_seconds * 100)
            pitch = steps.coarse_pitch(f0.copy())[:p_len]
            f0 = f0[:p_len].astype(np.float32)
        pieces, start = [], 0
        bounds = [t // hop * hop for t in cuts]
        ends = [*bounds, None]
        if progress and len(ends) > 1:
            from tqdm import tqdm

            ends = tqdm(ends, desc="converting", unit="chunk", disable=not sys.stderr.isatty())
        for end in ends:
            stop = None if end is None else end + 2 * t_pad + hop
            lo, hi = start // hop, None if end is None else (end + 2 * t_pad) // hop
            chunk = padded[start:stop]
            pieces.append(self._convert_chunk(
                chunk, None if pitch is None else pitch[lo:hi], None if f0 is None else f0[lo:hi], options))
            if end is not None:
                start = end
        out = np.concatenate(pieces)
        del pieces  # views of MLX buffers
        if mx.get_cache_memory() > CACHE_KEEP_BYTES:
            mx.clear_cache()
        rate = self.config.sample_rate
        if options.rms_mix_rate != 1:
            out = steps.mix_rms(filtered, steps.ANALYSIS_SAMPLE_RATE, out, rate, options.rms_mix_rate)
        target = options.output_sample_rate
        if target is not None and target != rate:
            from rvc_mlx.audio import resample

            out, rate = resample(out, rate, target), target
        return steps.limit_output_peak(out), rate

    # -- steps ---------------------------------------------------------------------------------

    def _f0(self, padded: np.ndarray, p_len: int, options: ConversionOptions) -> np.ndarray:
        """f0 in Hz per 10 ms frame of the padded signal, transposed by ``pitch_shift``."""
        from rvc_mlx.pitch import estimate_f0

        method = options.f0_method
        rate = steps.ANALYSIS_SAMPLE_RATE
        if method == "rmvpe":
            f0 = estimate_f0(padded, rate, method="rmvpe", model=self._rmvpe_model(),
                             mel_padding=self.rmvpe_padding)
        elif method == "pm":
            f0 = estimate_f0(padded, rate, method="pm", frames=p_len)
        elif method == "harvest":
            f0 = estimate_f0(padded, rate, method="harvest", filter_radius=options.filter_radius)
        else:  # crepe, crepe-tiny, fcpe: their own bundled or downloaded weights
            f0 = estimate_f0(padded, rate, method=method)
        f0 = np.asarray(f0, dtype=np.float64 if method in ("pm", "harvest") else np.float32)
        return f0 * pow(2, options.pitch_shift / 12)

    def _rmvpe_model(self):
        """The RMVPE to run: ``self.rmvpe`` as given at float32 (a path goes to `estimate_f0`'s shared
        cache); at a half precision a path's model is loaded once for this converter and cast."""
        from rvc_mlx.models.rmvpe import RMVPE

        if self.precision == "float32" or isinstance(self.rmvpe, RMVPE):
            return self.rmvpe
        if self._rmvpe_cast is None:
            from rvc_mlx.checkpoints.rmvpe import load_rmvpe
            from rvc_mlx.paths import default_model_path
            from rvc_mlx.precision import cast_model

            path = self.rmvpe if self.rmvpe is not None else default_model_path("rmvpe.pt")
            if not os.path.isfile(path):
                raise CheckpointError(path, "RMVPE weights not found (run `rvc-mlx download` or pass rmvpe=)")
            self._rmvpe_cast = cast_model(load_rmvpe(path), self.precision)
        return self._rmvpe_cast

    def _convert_chunk(self, chunk: np.ndarray, pitch, f0, options: ConversionOptions) -> np.ndarray:
        """One chunk (16 kHz, float64, padded by ``pad_seconds`` each side) -> model-rate audio with
        that padding trimmed."""
        version = self.config.version
        feats = self.hubert.content_features(mx.array(chunk.astype(np.float32))[None], version)  # (1, T, C)
        feats = feats.astype(mx.float32)  # retrieval and protect in float32 at any precision
        protect = options.protect < 0.5 and pitch is not None
        feats0 = feats if protect else None
        if self.index is not None and options.index_rate != 0:
            feats = self.index.blend(feats[0], options.index_rate, mode=self.index_mode)[None]
        feats = mx.repeat(feats, 2, axis=1)  # (1, 2T, C): each 20 ms frame twice -> 10 ms frames
        n = min(chunk.shape[0] // steps.HOP_LENGTH, feats.shape[1])
        feats = feats[:, :n]
        if protect:
            feats0 = mx.repeat(feats0, 2, axis=1)[:, :n]
            weight = mx.array(np.where(f0[:n] < 1, options.protect, 1.0).astype(np.float32))[None, :, None]
            feats = feats * weight + feats0 * (1 - weight)
        pitch_mx = f0_mx = None
        if pitch is not None:
            pitch_mx = mx.array(pitch[:n].astype(np.int32))[None]  # (1, T)
            f0_mx = mx.array(f0[:n].astype(np.float32))[None]  # (1, T)
        wave = self.synthesizer.infer(feats, None, pitch_mx, f0_mx, options.speaker_id,
                                      deterministic=options.deterministic)
        wave = np.asarray(wave, dtype=np.float32).reshape(-1)
        trim = self.config.sample_rate * self.segmentation.pad_seconds
        return wave[trim:-trim]


def replace_options(options: ConversionOptions, **changes) -> ConversionOptions:
    return dataclasses.replace(options, **changes)
