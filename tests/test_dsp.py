"""rvc_mlx.dsp against librosa (filterbank), torch.stft (magnitude) and the RMVPE reference MelSpectrogram."""

from __future__ import annotations

import numpy as np
import pytest

import rvc_mlx  # noqa: F401  (loads the BLAS before mlx.core)

import mlx.core as mx  # isort: skip
import torch  # isort: skip
from conftest import rel_err  # isort: skip

from rvc_mlx import dsp  # isort: skip


@pytest.mark.parametrize(
    "sample_rate,n_fft,n_mels,fmin,fmax,htk,norm",
    [
        (16000, 1024, 128, 30, 8000, True, "slaney"),  # RMVPE
        (16000, 1024, 128, 0, 8000, False, "slaney"),  # FCPE-style (Slaney scale)
        (44100, 2048, 128, 40, 16000, False, "slaney"),
        (48000, 2048, 80, 0, None, True, None),
    ],
)
def test_mel_filterbank_equals_librosa(sample_rate, n_fft, n_mels, fmin, fmax, htk, norm):
    librosa = pytest.importorskip("librosa")
    ours = dsp.mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax, htk=htk, norm=norm)
    ref = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk,
                              norm=norm)
    assert ours.shape == ref.shape == (n_mels, n_fft // 2 + 1)
    assert ours.dtype == np.float32
    assert np.max(np.abs(ours - ref)) <= 1e-6
    assert dsp.mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax, htk=htk, norm=norm) is ours  # cached


def test_mel_filterbank_rejects_unknown_norm():
    with pytest.raises(ValueError):
        dsp.mel_filterbank(16000, 1024, 128, norm="l2")


@pytest.mark.parametrize(
    "n_fft,hop_length,win_length,pad_mode,center,n_samples",
    [
        (1024, 160, 1024, "reflect", True, 16000),
        (1024, 160, 1024, "reflect", True, 16001),  # not a multiple of the hop
        (512, 128, 400, "constant", True, 8000),  # window shorter than the FFT, zero padding
        (1024, 256, 1024, "replicate", True, 4097),
        (1024, 160, 1024, "reflect", False, 16000),
    ],
)
def test_stft_magnitude_equals_torch(n_fft, hop_length, win_length, pad_mode, center, n_samples):
    x = np.random.default_rng(1).standard_normal((2, n_samples)).astype(np.float32)
    ours = np.array(dsp.stft_magnitude(mx.array(x), n_fft, hop_length, win_length, center=center,
                                       pad_mode=pad_mode))
    ref = torch.stft(torch.from_numpy(x), n_fft, hop_length, win_length, window=torch.hann_window(win_length),
                     center=center, pad_mode=pad_mode, return_complex=True).abs().numpy()
    ref = ref.transpose(0, 2, 1)  # (B, frames, bins)
    assert ours.shape == ref.shape
    assert rel_err(ours, ref) <= 1e-4


def test_stft_magnitude_errors():
    with pytest.raises(ValueError):
        dsp.stft_magnitude(mx.zeros((1, 400)), 1024, 160)  # reflect needs more than n_fft // 2 samples
    with pytest.raises(ValueError):
        dsp.stft_magnitude(mx.zeros((1, 4000)), 1024, 160, pad_mode="circular")


@pytest.mark.parametrize("frame_block", [None, 37])
def test_log_mel_equals_rmvpe_reference_mel(monkeypatch, frame_block):
    """In one block and in blocks of 37 frames (a long signal's route; the last block is short)."""
    from rvc.lib.rmvpe import MelSpectrogram

    if frame_block is not None:
        monkeypatch.setattr(dsp, "MEL_FRAME_BLOCK", frame_block)

    ref_mod = MelSpectrogram(False, 128, 16000, 1024, 160, None, 30, 8000)
    rng = np.random.default_rng(2)
    t = np.arange(24000) / 16000
    x = (0.3 * np.sin(2 * np.pi * 180 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    x[:3000] = 0.0  # silence: exercises the clamp
    with torch.no_grad():
        ref = ref_mod(torch.from_numpy(x)[None], center=True).numpy().transpose(0, 2, 1)  # (1, frames, 128)
    config = dsp.MelConfig(16000, 1024, 160, 1024, 128, 30.0, 8000.0, htk=True)
    ours = np.array(dsp.log_mel_spectrogram(mx.array(x)[None], config))
    assert ours.shape == ref.shape
    assert np.max(np.abs(ours - ref)) <= 1e-4
