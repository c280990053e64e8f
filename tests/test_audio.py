"""Audio I/O: round trips per format, downmix, resampling, atomic writes and the errors for bad files."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf
import soxr
from conftest import rel_err

from rvc_mlx.audio import check_output_path, load_audio, mp3_supported, save_audio
from rvc_mlx.errors import AudioError


def _tone(rate=16000, seconds=0.5, freq=440.0, channels=None):
    t = np.arange(int(rate * seconds)) / rate
    x = 0.5 * np.sin(2 * np.pi * freq * t)
    if channels:
        x = np.stack([x * (0.5 + 0.5 * c) for c in range(channels)], axis=1)
    return x.astype(np.float32)


def _snr_db(ours, ref):
    return 10 * np.log10(np.sum(ref**2) / np.sum((ours - ref) ** 2))


@pytest.mark.parametrize("ext", [".wav", ".flac"])
def test_lossless_round_trip_16_bit(tmp_path, ext):
    x = _tone()
    p = tmp_path / f"a{ext}"
    save_audio(p, x, 16000)
    assert sf.info(str(p)).subtype == "PCM_16"
    y, rate = load_audio(p)
    assert rate == 16000 and y.dtype == np.float32 and y.shape == x.shape
    assert np.abs(y - x).max() <= 1 / 32768  # 16-bit quantisation only
    np.testing.assert_array_equal(y, sf.read(str(p), dtype="float32")[0])


def test_float_wav_is_exact_and_int16_is_written_as_is(tmp_path, rng):
    x = rng.uniform(-1, 1, (1000, 2)).astype(np.float32)
    save_audio(tmp_path / "f.wav", x, 44100, subtype="FLOAT")
    assert sf.info(str(tmp_path / "f.wav")).subtype == "FLOAT"
    y, rate = load_audio(tmp_path / "f.wav", mono=False)
    assert rate == 44100
    np.testing.assert_array_equal(y, x)
    pcm = rng.integers(-32768, 32767, 800, dtype=np.int16)
    save_audio(tmp_path / "i.wav", pcm, 8000)
    np.testing.assert_array_equal(sf.read(str(tmp_path / "i.wav"), dtype="int16")[0], pcm)
    save_audio(tmp_path / "clip.wav", np.array([-3.0, 0.0, 3.0], np.float32), 8000)  # clipped, not wrapped
    np.testing.assert_array_equal(sf.read(str(tmp_path / "clip.wav"), dtype="int16")[0], [-32768, 0, 32767])


@pytest.mark.parametrize("ext", [".ogg", ".mp3"])
def test_lossy_round_trip(tmp_path, ext):
    if ext == ".mp3" and not mp3_supported():
        with pytest.raises(AudioError, match="MP3"):
            save_audio(tmp_path / "a.mp3", _tone(), 16000)
        return
    x = _tone(rate=44100, seconds=1.0)
    p = tmp_path / f"a{ext}"
    save_audio(p, x, 44100)
    y, rate = load_audio(p)
    assert rate == 44100 and y.dtype == np.float32
    # lossy codecs keep the tone (mp3 decoders may pad the end): compare the common middle part
    assert abs(len(y) - len(x)) <= 2048
    n = min(len(x), len(y))
    lag = np.argmax(np.correlate(y[4410:8820], x[4410:4410 + 2205], mode="valid"))  # decoder delay
    assert lag <= 2205
    mid = slice(4410, n - 4410 - lag)
    assert _snr_db(y[mid.start + lag:mid.stop + lag], x[mid]) > 30  # measured: ogg 41 dB, mp3 43 dB


def test_stereo_downmix_is_channel_mean(tmp_path):
    x = _tone(channels=3)  # three different gains
    save_audio(tmp_path / "s.wav", x, 16000, subtype="FLOAT")
    y, _ = load_audio(tmp_path / "s.wav")
    assert y.shape == (x.shape[0],)
    np.testing.assert_allclose(y, x.mean(axis=1), rtol=0, atol=1e-7)
    z, _ = load_audio(tmp_path / "s.wav", mono=False)
    assert z.shape == x.shape


@pytest.mark.parametrize("rate_in,rate_out", [(44100, 16000), (48000, 16000), (22050, 40000), (16000, 16000)])
def test_resampling(tmp_path, rate_in, rate_out):
    x = _tone(rate=rate_in, seconds=0.7, freq=300.0)
    save_audio(tmp_path / "r.wav", x, rate_in, subtype="FLOAT")
    y, rate = load_audio(tmp_path / "r.wav", sample_rate=rate_out)
    assert rate == rate_out and y.dtype == np.float32
    assert abs(len(y) - len(x) * rate_out / rate_in) <= 1
    want = soxr.resample(x, rate_in, rate_out, quality="VHQ")
    assert rel_err(y, want) <= 1e-6
    t = np.arange(len(y)) / rate_out  # the resampled tone is the same tone at the new rate
    ideal = 0.5 * np.sin(2 * np.pi * 300.0 * t)
    inner = slice(rate_out // 20, len(y) - rate_out // 20)
    assert _snr_db(y[inner], ideal[inner]) > 100  # measured ~150 dB
    y2, _ = load_audio(tmp_path / "r.wav", sample_rate=rate_out, mono=False)
    assert y2.shape == (len(y), 1)


def test_load_errors(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(AudioError, match="regular file"):
        load_audio(tmp_path)
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioError, match="empty") as e:
        load_audio(tmp_path / "empty.wav")
    assert e.value.path == str(tmp_path / "empty.wav")
    (tmp_path / "junk.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk")
    with pytest.raises(AudioError, match="cannot read"):
        load_audio(tmp_path / "junk.wav")
    save_audio(tmp_path / "ok.wav", _tone(), 16000)
    cut = (tmp_path / "ok.wav").read_bytes()[:30]  # header cut short
    (tmp_path / "cut.wav").write_bytes(cut)
    with pytest.raises(AudioError):
        load_audio(tmp_path / "cut.wav")
    sf.write(str(tmp_path / "zero.wav"), np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(AudioError, match="no samples"):
        load_audio(tmp_path / "zero.wav")
    bad = _tone()
    bad[100] = np.nan
    sf.write(str(tmp_path / "nan.wav"), bad, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(tmp_path / "nan.wav")


def test_save_errors(tmp_path):
    x = _tone()
    with pytest.raises(AudioError, match="extension"):
        save_audio(tmp_path / "a.xyz", x, 16000)
    with pytest.raises(AudioError, match="FLOAT"):
        save_audio(tmp_path / "a.flac", x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="directory does not exist"):
        save_audio(tmp_path / "nope" / "a.wav", x, 16000)
    with pytest.raises(AudioError, match="non-empty"):
        save_audio(tmp_path / "a.wav", np.zeros(0, np.float32), 16000)
    assert os.listdir(tmp_path) == []


def test_refuses_to_overwrite_input(tmp_path):
    src = tmp_path / "in.wav"
    save_audio(src, _tone(), 16000)
    before = src.read_bytes()
    os.makedirs(tmp_path / "sub")
    for same in (src, tmp_path / "sub" / ".." / "in.wav"):
        with pytest.raises(AudioError, match="overwrite the input"):
            check_output_path(src, same)
        with pytest.raises(AudioError, match="overwrite the input"):
            save_audio(same, _tone(freq=100.0), 16000, protect=src)
    os.symlink(src, tmp_path / "link.wav")
    with pytest.raises(AudioError, match="overwrite the input"):
        save_audio(tmp_path / "link.wav", _tone(), 16000, protect=src)
    assert src.read_bytes() == before
    check_output_path(src, tmp_path / "out.wav")  # a different file is fine
    save_audio(tmp_path / "out.wav", _tone(), 16000, protect=src)


def test_failed_write_leaves_nothing_and_keeps_existing_output(tmp_path, monkeypatch):
    out = tmp_path / "out.wav"
    save_audio(out, _tone(freq=200.0), 16000)
    before = out.read_bytes()
    real_write = sf.SoundFile.write

    def write_half_then_fail(self, data):  # e.g. the disk filling up mid-write
        real_write(self, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sf.SoundFile, "write", write_half_then_fail)
    with pytest.raises(AudioError, match="No space left"):
        save_audio(out, _tone(freq=300.0, seconds=2.0), 16000)
    with pytest.raises(AudioError, match="No space left"):
        save_audio(tmp_path / "new.flac", _tone(), 16000)
    monkeypatch.undo()
    assert out.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["out.wav"]  # no temporary or partial files
    with pytest.raises(AudioError, match="NaN"):
        save_audio(out, np.full(100, np.nan, np.float32), 16000)
    assert out.read_bytes() == before
    save_audio(out, _tone(freq=300.0), 16000)  # a successful write replaces it
    assert out.read_bytes() != before
    mode = os.stat(out).st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
