"""librosa.util names rvc 0.3.5 imports; only its unused STFT class calls them."""

import numpy as np


def tiny(x):
    return np.finfo(np.asarray(x).dtype).tiny


def pad_center(data, *, size, axis=-1, **kwargs):
    n = data.shape[axis]
    lpad = (size - n) // 2
    widths = [(0, 0)] * data.ndim
    widths[axis] = (lpad, size - n - lpad)
    return np.pad(data, widths, **kwargs)


def normalize(*args, **kwargs):
    raise NotImplementedError("librosa stand-in: normalize is not available on this host")
