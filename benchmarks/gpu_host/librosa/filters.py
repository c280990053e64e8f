"""librosa.filters.mel through rvc-mlx's filterbank (bit-identical to librosa's in tests/test_dsp.py)."""


def mel(*, sr, n_fft, n_mels=128, fmin=0.0, fmax=None, htk=False, norm="slaney"):
    from rvc_mlx.dsp import mel_filterbank

    return mel_filterbank(sr, n_fft, n_mels, fmin, fmax, htk=htk, norm=norm)
