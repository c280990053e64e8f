"""FCPE pitch estimator (torchfcpe's CFNaiveMelPE, bundled checkpoint `fcpe_c_v001`) in MLX.

Pipeline, each step equal to torchfcpe 0.0.4:
  16 kHz audio -> log-mel (hop 160, 1024-point Hann STFT without centring, 128 Slaney mel bands, log with a
  1e-5 floor) -> input stack (conv3, GroupNorm(4), LeakyReLU, conv3) -> conformer convolution blocks
  (the bundled model is `conv_only`: no attention) -> LayerNorm -> weight-normed linear -> sigmoid salience
  over 360 cent bins -> "local argmax" decoding (weighted mean of the 9 bins around the peak) -> Hz.

All tensors are channels-last: mel (B, T, 128), hidden (B, T, 512), salience (B, T, 360).
Weights come prepared by `rvc_mlx.checkpoints.fcpe` (weight norm folded, (C_out, K, C_in) conv layouts,
(C_in, C_out) matmul layouts), so nothing is transposed per call.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from rvc_mlx.dsp import mel_filterbank, stft_magnitude
from rvc_mlx.errors import AudioError
from rvc_mlx.models.activations import sigmoid
from rvc_mlx.models.conv import Conv1d


@dataclass(frozen=True)
class FcpeConfig:
    """Hyper-parameters of a CFNaiveMelPE checkpoint (defaults: the bundled `fcpe_c_v001`)."""

    sample_rate: int = 16000  # model input rate in Hz (mel.sr)
    n_mels: int = 128  # mel bands fed to the network (mel.num_mels)
    n_fft: int = 1024  # STFT size in samples (mel.n_fft)
    win_length: int = 1024  # Hann window length in samples (mel.win_size)
    hop_length: int = 160  # samples between frames: 100 frames/s at 16 kHz (mel.hop_size)
    mel_fmin: float = 0.0  # lowest mel-band edge in Hz (mel.fmin)
    mel_fmax: float = 8000.0  # highest mel-band edge in Hz (mel.fmax)
    log_floor: float = 1e-5  # magnitudes are clamped to this before the log (torchfcpe clip_val)
    hidden_dims: int = 512  # width of the input stack and conformer blocks
    n_layers: int = 6  # conformer blocks
    out_dims: int = 360  # cent bins of the salience output
    f0_min: float = 32.7  # Hz at the first cent bin
    f0_max: float = 1975.5  # Hz at the last cent bin
    kernel_size: int = 31  # depthwise conv kernel of each conformer block (odd)
    expansion: int = 2  # inner width of a conformer block = expansion * hidden_dims
    group_norm_groups: int = 4  # groups of the input stack's GroupNorm


# Norm epsilons of torch.nn.GroupNorm / LayerNorm defaults, which torchfcpe uses.
_NORM_EPS = 1e-5
# torchfcpe adds this inside the STFT magnitude's square root.
_MAG_EPS = 1e-9
# Local-argmax decoding averages this many bins centred on the peak.
_LOCAL_BINS = 9

# ---------------------------------------------------------------------------------------------------------
# Mel front end
# ---------------------------------------------------------------------------------------------------------


def _pad_indices(n_samples: int, pad_left: int, pad_right: int, reflect: bool) -> np.ndarray:
    """Source index of every padded sample; index n_samples means "zero" (constant padding)."""
    pos = np.arange(-pad_left, n_samples + pad_right)
    if reflect:
        pos = np.abs(pos)
        pos = np.where(pos >= n_samples, 2 * (n_samples - 1) - pos, pos)
    else:
        pos = np.where((pos < 0) | (pos >= n_samples), n_samples, pos)
    return pos.astype(np.int32)


class FcpeMel:
    """torchfcpe's `Wav2MelModule` at the model rate: (B, N) audio -> (B, N // hop + 1, n_mels) log-mel."""

    def __init__(self, config: FcpeConfig):
        self.config = config
        c = config
        basis = mel_filterbank(c.sample_rate, c.n_fft, c.n_mels, c.mel_fmin, c.mel_fmax, htk=False,
                               norm="slaney")  # (n_mels, n_bins)
        self.mel_basis_t = mx.array(np.ascontiguousarray(basis.T))  # (n_bins, n_mels), for spec @ basis

    def __call__(self, audio: mx.array) -> mx.array:
        """audio (B, N) float32 at `sample_rate` -> log-mel (B, N // hop_length + 1, n_mels)."""
        c = self.config
        batch, n_samples = audio.shape
        pad_left = (c.win_length - c.hop_length) // 2
        pad_right = max((c.win_length - c.hop_length + 1) // 2, c.win_length - n_samples - pad_left)
        reflect = pad_right < n_samples  # torchfcpe's rule: reflect unless the signal is too short
        index = mx.array(_pad_indices(n_samples, pad_left, pad_right, reflect))
        padded = mx.concatenate([audio, mx.zeros((batch, 1), audio.dtype)], axis=1)[:, index]
        # torchfcpe pads itself and runs torch.stft(center=False); its magnitude has 1e-9 inside the root.
        magnitude = stft_magnitude(padded, c.n_fft, c.hop_length, c.win_length, center=False)  # (B, T, bins)
        magnitude = mx.sqrt(mx.square(magnitude) + _MAG_EPS)
        n_stft = magnitude.shape[1]
        mel = mx.log(mx.maximum(magnitude @ self.mel_basis_t, c.log_floor))  # (B, T, n_mels)
        n_frames = n_samples // c.hop_length + 1
        if n_frames > n_stft:  # torchfcpe repeats the last frame once
            mel = mx.concatenate([mel, mel[:, -1:]], axis=1)
        return mel[:, :n_frames]


# ---------------------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------------------


class _Affine(nn.Module):
    """Per-channel scale and shift of a norm layer."""

    def __init__(self, dims: int):
        super().__init__()
        self.weight = mx.ones((dims,))
        self.bias = mx.zeros((dims,))


class _Dense(nn.Module):
    """x @ weight + bias with weight stored (C_in, C_out): a linear layer or a 1x1 convolution."""

    def __init__(self, dims_in: int, dims_out: int):
        super().__init__()
        self.weight = mx.zeros((dims_in, dims_out))
        self.bias = mx.zeros((dims_out,))

    def __call__(self, x: mx.array) -> mx.array:
        return mx.addmm(self.bias, x, self.weight)


class _DepthwiseConv(nn.Module):
    """Per-channel 'same' convolution, weight (K, C): a sum of K shifted products.

    (On the CPU ~10x faster than a grouped `mx.conv1d` or `models.conv.Conv1d(groups=C)`, whose per-group
    GEMMs are 1x1 here; no per-sample loop.)
    """

    def __init__(self, dims: int, kernel_size: int):
        super().__init__()
        self.weight = mx.zeros((kernel_size, dims))
        self.bias = mx.zeros((dims,))

    def __call__(self, x: mx.array) -> mx.array:
        kernel_size = self.weight.shape[0]
        pad = kernel_size // 2
        length = x.shape[1]
        padded = mx.pad(x, [(0, 0), (pad, kernel_size - 1 - pad), (0, 0)])  # (B, T + K - 1, C)
        out = padded[:, 0:length] * self.weight[0] + self.bias
        for k in range(1, kernel_size):  # loop over kernel taps, not samples
            out = out + padded[:, k : k + length] * self.weight[k]
        return out


class ConformerConvBlock(nn.Module):
    """x + Conv(x): LayerNorm -> 1x1 (C -> 4C) -> GLU -> depthwise K -> SiLU -> 1x1 (2C -> C); (B, T, C)."""

    def __init__(self, dims: int, expansion: int, kernel_size: int):
        super().__init__()
        inner = dims * expansion
        self.norm = _Affine(dims)
        self.expand = _Dense(dims, 2 * inner)
        self.depthwise = _DepthwiseConv(inner, kernel_size)
        self.project = _Dense(inner, dims)

    def __call__(self, x: mx.array) -> mx.array:
        h = mx.fast.layer_norm(x, self.norm.weight, self.norm.bias, _NORM_EPS)
        h = self.expand(h)  # (B, T, 2 * inner)
        value, gate = mx.split(h, 2, axis=-1)
        h = value * sigmoid(gate)  # GLU over channels
        h = self.depthwise(h)
        h = h * sigmoid(h)  # SiLU
        return x + self.project(h)


class FCPE(nn.Module):
    """CFNaiveMelPE (conv-only conformer): log-mel (B, T, n_mels) -> salience (B, T, out_dims) in [0, 1].

    Parameters are set from a prepared state dict (`rvc_mlx.checkpoints.fcpe`); `cent_table` (out_dims,)
    holds the checkpoint's bin centres in cents re 10 Hz.
    """

    def __init__(self, config: FcpeConfig = FcpeConfig()):
        super().__init__()
        c = config
        self.config = config
        self.mel = FcpeMel(config)
        self.input_conv1 = Conv1d(c.n_mels, c.hidden_dims, 3, padding=1)  # weight (C_out, 3, C_in)
        self.input_norm = _Affine(c.hidden_dims)
        self.input_conv2 = Conv1d(c.hidden_dims, c.hidden_dims, 3, padding=1)
        self.layers = [
            ConformerConvBlock(c.hidden_dims, c.expansion, c.kernel_size) for _ in range(c.n_layers)
        ]
        self.out_norm = _Affine(c.hidden_dims)
        self.out_proj = _Dense(c.hidden_dims, c.out_dims)
        self.cent_table = mx.zeros((c.out_dims,))

    def _group_norm(self, x: mx.array) -> mx.array:
        batch, length, dims = x.shape
        groups = self.config.group_norm_groups
        g = x.reshape(batch, length, groups, dims // groups)  # (B, T, G, C / G)
        mean = mx.mean(g, axis=(1, 3), keepdims=True)
        var = mx.var(g, axis=(1, 3), keepdims=True)
        g = (g - mean) * mx.rsqrt(var + _NORM_EPS)
        return g.reshape(batch, length, dims) * self.input_norm.weight + self.input_norm.bias  # (B, T, C)

    def __call__(self, mel: mx.array) -> mx.array:
        """mel (B, T, n_mels) -> salience (B, T, out_dims)."""
        x = self.input_conv1(mel)
        x = nn.leaky_relu(self._group_norm(x), negative_slope=0.01)
        x = self.input_conv2(x)  # (B, T, hidden)
        for layer in self.layers:
            x = layer(x)
        x = mx.fast.layer_norm(x, self.out_norm.weight, self.out_norm.bias, _NORM_EPS)
        return sigmoid(self.out_proj(x))

    def decode_local_argmax(self, salience: mx.array, threshold: float) -> mx.array:
        """salience (B, T, out_dims) -> f0 (B, T) in Hz, 0 where the peak salience <= threshold."""
        peak = mx.max(salience, axis=-1, keepdims=True)  # (B, T, 1)
        centre = mx.argmax(salience, axis=-1, keepdims=True).astype(mx.int32)
        offsets = mx.arange(_LOCAL_BINS, dtype=mx.int32) - _LOCAL_BINS // 2
        window = mx.clip(centre + offsets, 0, self.config.out_dims - 1)  # (B, T, 9)
        weights = mx.take_along_axis(salience, window, axis=-1)
        cents = mx.sum(self.cent_table[window] * weights, axis=-1) / mx.sum(weights, axis=-1)  # (B, T)
        f0 = 10.0 * mx.power(2.0, cents / 1200.0)
        return mx.where(peak[..., 0] > threshold, f0, 0.0)


def check_audio(audio: np.ndarray, name: str = "audio") -> np.ndarray:
    """A 1-D finite float32 copy of `audio`, or AudioError."""
    a = np.asarray(audio)
    if a.ndim != 1:
        raise AudioError(name, f"expected 1-D mono samples, got shape {a.shape}")
    if a.size == 0:
        raise AudioError(name, "is empty")
    a = a.astype(np.float32)
    if not np.all(np.isfinite(a)):
        raise AudioError(name, "contains NaN or infinite samples")
    return a


def _interp_unvoiced(f0: np.ndarray, unvoiced: np.ndarray) -> np.ndarray:
    """Fill unvoiced frames by linear interpolation between voiced ones, holding the end values (1-D)."""
    if unvoiced.all() or not unvoiced.any():
        return f0
    frames = np.arange(f0.shape[0])
    out = f0.copy()
    out[unvoiced] = np.interp(frames[unvoiced], frames[~unvoiced], f0[~unvoiced])
    return out


def resize_nearest(values: np.ndarray, n_frames: int) -> np.ndarray:
    """Nearest-neighbour resize of a 1-D curve to n_frames, as torch's `interpolate(mode="nearest")`."""
    scale = np.float32(values.shape[0]) / np.float32(n_frames)  # torch computes the source index in float32
    src = np.floor(np.arange(n_frames, dtype=np.float32) * scale).astype(np.int64)
    return values[np.minimum(src, values.shape[0] - 1)]


def fcpe_f0(
    audio_16k: np.ndarray,
    *,
    model: FCPE | None = None,
    threshold: float = 0.006,
    f0_min: float = 50.0,
    f0_max: float | None = 1100.0,
    n_frames: int | None = None,
    interp_unvoiced: bool = False,
) -> np.ndarray:
    """f0 in Hz of 16 kHz mono audio, one value per 160-sample hop, 0.0 where unvoiced.

    Equal to torchfcpe's `infer(audio, sr=16000, decoder_mode="local_argmax", threshold, f0_min, f0_max,
    interp_uv, output_interp_target_length)` on the bundled model.

    Args:
        audio_16k: (N,) samples at 16 kHz.
        model: a loaded FCPE (`rvc_mlx.checkpoints.fcpe.load_fcpe`); None: `load_fcpe()` (cached), i.e.
            `<models dir>/fcpe_c_v001.pt` or the copy inside an installed torchfcpe package.
        threshold: frames whose peak salience is <= this are unvoiced (Applio and torchfcpe use 0.006).
        f0_min: Hz; with `interp_unvoiced`, frames below it count as unvoiced (no effect otherwise, as in
            torchfcpe; the model itself never outputs less than its 32.7 Hz bottom bin).
        f0_max: Hz; voiced values above it are clamped to it. None: no clamp (Applio's call).
        n_frames: resize the curve to this many frames (nearest neighbour). None: N // 160 + 1 frames.
        interp_unvoiced: fill unvoiced frames by linear interpolation instead of 0.
    Returns:
        (N // 160 + 1,) or (n_frames,) float32.
    """
    audio = check_audio(audio_16k, "audio_16k")
    if model is None:
        from rvc_mlx.checkpoints.fcpe import load_fcpe  # lazy: the loader imports this module

        model = load_fcpe()
    mel = model.mel(mx.array(audio)[None])  # (1, T, n_mels)
    f0 = model.decode_local_argmax(model(mel), threshold)[0]  # (T,)
    f0 = np.array(f0, dtype=np.float32)
    if interp_unvoiced:
        f0 = _interp_unvoiced(f0, f0 < f0_min)
    if f0_max is not None:
        f0 = np.minimum(f0, np.float32(f0_max))
    if n_frames is not None:
        f0 = resize_nearest(f0, int(n_frames))
    return f0


def _estimate(audio_16k: np.ndarray, model, *, threshold: float = 0.006, f0_max: float | None = None):
    """`rvc_mlx.pitch` entry: a path or a loaded model (None: the default checkpoint), Applio's settings."""
    from rvc_mlx.checkpoints.fcpe import load_fcpe
    from rvc_mlx.pitch import cached_model

    if model is None:
        model = load_fcpe()
    elif isinstance(model, str):
        model = cached_model("fcpe", model, load_fcpe)
    return fcpe_f0(audio_16k, model=model, threshold=threshold, f0_max=f0_max)


def _register() -> None:
    from rvc_mlx.pitch import PitchMethod, register_method

    register_method(PitchMethod("fcpe", _estimate))


_register()
