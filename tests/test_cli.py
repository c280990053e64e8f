"""The `rvc-mlx` command end to end on random-weight model files in RVC's layouts."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from rvc_mlx.cli import main

rm = pytest.importorskip("reference_models")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    rm.make_voice(d / "voice.pth", "v2", 1, 40000)
    rm.make_voice(d / "voice_v1.pth", "v1", 0, 32000)
    rm.make_hubert(d / "hubert_base.pt")
    rm.make_rmvpe(d / "rmvpe.pt", voiced_logit=4.0)
    rm.make_index(d / "voice.index", 768)
    t = np.arange(int(16000 * 1.5)) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 180 * t) + 0.1 * np.sin(2 * np.pi * 360 * t)).astype(np.float32)
    inputs = d / "inputs"
    inputs.mkdir()
    sf.write(inputs / "a.wav", tone, 16000)
    sf.write(inputs / "b.flac", np.stack([tone, tone], axis=1)[: 16000], 22050)  # stereo, other rate
    (inputs / "broken.wav").write_bytes(b"RIFF....WAVEjunk")
    sf.write(inputs / "silent.wav", np.zeros(16000, np.float32), 16000)
    return d


def _infer_args(files, *extra):
    return ["infer", "-m", str(files / "voice.pth"), "--hubert", str(files / "hubert_base.pt"),
            "--rmvpe", str(files / "rmvpe.pt"), "--deterministic", *extra]


def test_infer_one_file(files, tmp_path, capsys):
    out = tmp_path / "out.wav"
    assert main(_infer_args(files, "-i", str(files / "inputs" / "a.wav"), "-o", str(out),
                            "--pitch-shift", "2", "--index", str(files / "voice.index"))) == 0
    audio, rate = sf.read(out)
    assert rate == 40000 and abs(audio.shape[0] - 1.5 * 40000) < 40000 * 0.03
    assert sf.info(str(out)).subtype == "PCM_16"
    assert np.abs(audio).max() > 0.01


def test_infer_directory_goes_on_past_bad_files(files, tmp_path, capsys):
    out = tmp_path / "converted"
    code = main(_infer_args(files, "-i", str(files / "inputs"), "-o", str(out), "--format", "FLOAT",
                            "--output-sample-rate", "44100"))
    err = capsys.readouterr().err
    assert code == 1
    assert sorted(os.listdir(out)) == ["a.wav", "b.wav"]
    assert "2 of 4 files failed" in err and "broken.wav" in err and "silent.wav" in err
    assert sf.info(str(out / "b.wav")).samplerate == 44100
    assert sf.info(str(out / "b.wav")).subtype == "FLOAT"


def test_bad_requests_exit_non_zero_with_a_message(files, tmp_path, capsys):
    src = files / "inputs" / "a.wav"
    before = src.read_bytes()
    assert main(_infer_args(files, "-i", str(src), "-o", str(src))) == 2
    assert "input" in capsys.readouterr().err
    assert src.read_bytes() == before  # the input is never overwritten
    assert main(_infer_args(files, "-i", str(tmp_path / "missing.wav"), "-o", str(tmp_path / "o.wav"))) == 2
    assert "missing.wav" in capsys.readouterr().err
    assert main(["infer", "-m", str(files / "voice_v1.pth"), "--hubert", str(files / "hubert_base.pt"),
                 "-i", str(src), "-o", str(tmp_path / "o.wav"), "--index", str(files / "voice.index")]) == 2
    assert "768-d vectors" in capsys.readouterr().err
    assert main(["info", str(files / "inputs" / "a.wav")]) == 2
    assert "a.wav" in capsys.readouterr().err
    assert not (tmp_path / "o.wav").exists()


def test_convert_checkpoint_and_info(files, tmp_path, capsys):
    out = tmp_path / "voice.safetensors"
    assert main(["convert-checkpoint", str(files / "voice.pth"), "-o", str(out)]) == 0
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "version: v2" in text and "sample_rate: 40000" in text and "f0: True" in text
    for kind, name in [("hubert", "hubert_base.pt"), ("rmvpe", "rmvpe.pt")]:
        dst = tmp_path / f"{kind}.safetensors"
        assert main(["convert-checkpoint", str(files / name), "-o", str(dst)]) == 0
        assert f"({kind})" in capsys.readouterr().out


def test_native_files_convert_the_same_as_pth(files, tmp_path):
    for kind, name in [("voice", "voice.pth"), ("hubert", "hubert_base.pt"), ("rmvpe", "rmvpe.pt")]:
        dst = tmp_path / f"{kind}.safetensors"
        assert main(["convert-checkpoint", str(files / name), "-o", str(dst)]) == 0
    src = files / "inputs" / "a.wav"
    outs = []
    for voice, hubert, rmvpe in [(files / "voice.pth", files / "hubert_base.pt", files / "rmvpe.pt"),
                                 (tmp_path / "voice.safetensors", tmp_path / "hubert.safetensors",
                                  tmp_path / "rmvpe.safetensors")]:
        out = tmp_path / f"out-{len(outs)}.wav"
        assert main(["infer", "-m", str(voice), "--hubert", str(hubert), "--rmvpe", str(rmvpe),
                     "-i", str(src), "-o", str(out), "--deterministic", "--format", "FLOAT"]) == 0
        outs.append(sf.read(out)[0])
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-6)


def test_loading_and_converting_never_import_torch(files, tmp_path):
    code = f"""
import sys
import rvc_mlx
from rvc_mlx.cli import main
assert main(["convert-checkpoint", {str(files / 'voice.pth')!r},
             "-o", {str(tmp_path / 'v.safetensors')!r}]) == 0
assert main(["infer", "-m", {str(files / 'voice.pth')!r}, "--hubert", {str(files / 'hubert_base.pt')!r},
             "--rmvpe", {str(files / 'rmvpe.pt')!r}, "-i", {str(files / 'inputs' / 'a.wav')!r},
             "-o", {str(tmp_path / 'o.wav')!r}, "--deterministic"]) == 0
print("torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_index_stored_in_the_native_voice(files, tmp_path, capsys):
    out = tmp_path / "voice.safetensors"
    assert main(["convert-checkpoint", str(files / "voice.pth"), "-o", str(out), "--index",
                 str(files / "voice.index")]) == 0
    assert main(["info", str(out)]) == 0
    assert "index_vectors: 600" in capsys.readouterr().out
    src = str(files / "inputs" / "a.wav")
    common = ["--hubert", str(files / "hubert_base.pt"), "--rmvpe", str(files / "rmvpe.pt"), "-i", src,
              "--deterministic", "--format", "FLOAT", "--index-mode", "ivf"]
    assert main(["infer", "-m", str(out), "-o", str(tmp_path / "stored.wav"), *common]) == 0
    assert main(["infer", "-m", str(files / "voice.pth"), "--index", str(files / "voice.index"),
                 "-o", str(tmp_path / "file.wav"), *common]) == 0
    assert main(["infer", "-m", str(files / "voice.pth"), "-o", str(tmp_path / "none.wav"), *common]) == 0
    stored, from_file, none = (sf.read(tmp_path / f"{n}.wav")[0] for n in ("stored", "file", "none"))
    np.testing.assert_allclose(stored, from_file, atol=1e-6)
    assert np.max(np.abs(stored - none)) > 1e-3  # the index changed the output
    wrong = tmp_path / "v1.safetensors"
    rm.make_voice(tmp_path / "v1.pth", "v1", 1, 40000)
    assert main(["convert-checkpoint", str(tmp_path / "v1.pth"), "-o", str(wrong), "--index",
                 str(files / "voice.index")]) == 2
    assert "768-d vectors" in capsys.readouterr().err and not wrong.exists()
