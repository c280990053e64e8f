"""librosa.feature.rms for audio input: centred, zero-padded frames, mean square in float32."""

import numpy as np


def rms(*, y, frame_length=2048, hop_length=512, center=True, pad_mode="constant", dtype=np.float32):
    if center:
        y = np.pad(y, (frame_length // 2, frame_length // 2), mode=pad_mode)
    frames = np.lib.stride_tricks.sliding_window_view(y, frame_length)[::hop_length].T  # (frame, n)
    return np.sqrt(np.mean(np.square(frames, dtype=dtype), axis=-2, keepdims=True))
