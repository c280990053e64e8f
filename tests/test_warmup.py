"""``rvc_mlx.warmup.warm_up`` on small random models (v1 voice at 32 kHz, a narrow 9-layer HuBERT: v1 reads
layer 9, a 1-block RMVPE, an IVF index): it runs the conversions it was asked for, reports their times, and
leaves nothing behind that changes a later conversion: noisy (unseeded) and deterministic outputs are
bit-identical with and without a warm-up in between.
"""

from __future__ import annotations

import numpy as np
import pytest

import rvc_mlx  # noqa: F401  (loads the BLAS before mlx.core)

# isort: split
import mlx.core as mx

from rvc_mlx.errors import RVCError
from rvc_mlx.index import FeatureIndex
from rvc_mlx.models.hubert import HubertConfig, HubertModel
from rvc_mlx.models.rmvpe import RMVPE, RMVPEConfig
from rvc_mlx.models.synthesizer import Synthesizer, VoiceConfig
from rvc_mlx.pipeline import ConversionOptions, Segmentation, VoiceConverter
from rvc_mlx.warmup import WarmUpResult, default_seconds, synthetic_voice, warm_up

# v1 voice, 32 kHz (hop 320 = 10 * 8 * 2 * 2), narrow widths, RVC's resblock "1" structure.
SMALL_VOICE = [65, 32, 16, 16, 32, 2, 2, 3, 0, "1", [3, 7], [[1, 3, 5]] * 2, [10, 8, 2, 2], 32,
               [20, 16, 4, 4], 4, 16, 32000]
SMALL_HUBERT = HubertConfig(conv_layers=((32, 10, 5),) + ((32, 3, 2),) * 4 + ((32, 2, 2),) * 2,
                            hidden_size=64, num_layers=9, num_heads=4, ffn_size=64, pos_conv_kernel=16,
                            pos_conv_groups=4, final_proj_size=256)
# Short segmentation so that a few seconds of audio already take the chunked path.
SEGMENTATION = Segmentation(pad_seconds=1, query_seconds=1, center_seconds=3, max_seconds=4)


@pytest.fixture(scope="module")
def converter():
    mx.random.seed(3)
    voice = Synthesizer(VoiceConfig.from_rvc(SMALL_VOICE, version="v1", f0=True))
    hubert = HubertModel(SMALL_HUBERT)
    rmvpe = RMVPE(RMVPEConfig(n_blocks=1, inter_layers=1, en_out_channels=4, gru_hidden=16))
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((600, 256)).astype(np.float32)
    centroids = vectors[:8]
    assign = ((centroids**2).sum(1)[None] - 2 * vectors @ centroids.T).argmin(1).astype(np.int32)
    index = FeatureIndex(vectors, centroids, assign)
    return VoiceConverter(voice, hubert, index=index, index_mode="ivf", rmvpe=rmvpe,
                          segmentation=SEGMENTATION)


def _convert(converter, audio, **options):
    out, rate = converter.convert_16k(audio, ConversionOptions(**options))
    return out, rate


def test_warm_up_runs_each_length_and_times_it(converter):
    result = warm_up(converter, seconds=(1.0, 5.5), index_rate=0.5, deterministic=True)
    assert isinstance(result, WarmUpResult)
    assert [length for length, _ in result.runs] == [1.0, 5.5]
    assert all(t > 0 for _, t in result.runs)
    assert result.elapsed_seconds >= sum(t for _, t in result.runs)
    assert default_seconds(converter) == (3.0, 9.0)  # short, and max_seconds + 5: split into chunks


def test_warm_up_changes_no_later_output(converter):
    audio = synthetic_voice(5.0) * 0.8 + 0.01 * np.sin(np.arange(80000) / 7.0).astype(np.float32)
    for options in ({"deterministic": True}, {"deterministic": False}, {"seed": 11}):
        mx.random.seed(5)
        plain, rate = _convert(converter, audio, **options)
        mx.random.seed(5)
        warm_up(converter, seconds=(1.0, 5.5), **options)
        after, rate_after = _convert(converter, audio, **options)
        assert rate == rate_after == 32000
        np.testing.assert_array_equal(after, plain)
    # The noisy warm-up draws from the global key: only the restore keeps the later draw the same.
    mx.random.seed(5)
    warm_up(converter, seconds=(1.0,), deterministic=False)
    assert mx.random.state[0].tolist() == mx.random.key(5).tolist()


def test_synthetic_voice_is_deterministic_and_voiced():
    a, b = synthetic_voice(2.0), synthetic_voice(2.0)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.shape == (32000,)
    assert 0.2 < np.abs(a).max() < 0.95 and (np.abs(a[:16000]) < 0.02).any()  # gated: quiet stretches


def test_bad_lengths_are_refused(converter):
    with pytest.raises(RVCError, match="at least 0.5 s"):
        warm_up(converter, seconds=(0.1,))
    with pytest.raises(RVCError, match="at least 0.5 s"):
        warm_up(converter, seconds=())
