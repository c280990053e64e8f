"""`rvc-mlx download` against a local stand-in for the hub (no network here)."""

from __future__ import annotations

import hashlib
import os
import shutil
import types

import pytest

from rvc_mlx import download as dl
from rvc_mlx.errors import RVCError


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A hub serving files from a local folder, publishing their true SHA-256 as ETag."""
    served = tmp_path / "hub"
    served.mkdir()
    for name, payload in {"hubert_base.pt": b"hubert" * 1000, "rmvpe.pt": b"rmvpe" * 777}.items():
        (served / name).write_bytes(payload)
    published = {n: hashlib.sha256((served / n).read_bytes()).hexdigest() for n in os.listdir(served)}
    calls = []

    def hf_hub_url(repo_id, filename):
        return f"hub://{repo_id}/{filename}"

    def get_hf_file_metadata(url):
        return types.SimpleNamespace(etag=f'"{published[url.rsplit("/", 1)[1]]}"')

    def hf_hub_download(repo_id, filename, local_dir):
        calls.append(filename)
        out = os.path.join(local_dir, filename)
        shutil.copy(served / filename, out)
        return out

    hub = types.SimpleNamespace(hf_hub_url=hf_hub_url, get_hf_file_metadata=get_hf_file_metadata,
                                hf_hub_download=hf_hub_download)
    monkeypatch.setattr(dl, "_hub", lambda: hub)
    return types.SimpleNamespace(dir=served, published=published, calls=calls)


def test_downloads_verifies_and_skips_present_files(tmp_path, fake_hub):
    target = tmp_path / "models"
    paths = dl.download(target_dir=str(target))
    assert set(paths) == {"hubert_base.pt", "rmvpe.pt"}
    for name, path in paths.items():
        assert dl.sha256_of(path) == fake_hub.published[name]
    assert sorted(os.listdir(target)) == ["hubert_base.pt", "rmvpe.pt"]  # no temporary leftovers
    dl.download(target_dir=str(target))
    assert len(fake_hub.calls) == 2  # second run found both files intact


def test_models_dir_follows_environment(tmp_path, fake_hub, monkeypatch):
    monkeypatch.setenv("RVC_MLX_HOME", str(tmp_path / "home"))
    paths = dl.download(["rmvpe.pt"])
    assert paths["rmvpe.pt"] == str(tmp_path / "home" / "rmvpe.pt")


def test_corrupted_download_is_discarded(tmp_path, fake_hub):
    (fake_hub.dir / "rmvpe.pt").write_bytes(b"tampered")
    target = tmp_path / "models"
    with pytest.raises(RVCError, match="does not match"):
        dl.download(["rmvpe.pt"], target_dir=str(target))
    assert os.listdir(target) == []


def test_unknown_name(tmp_path, fake_hub):
    with pytest.raises(RVCError, match="unknown model"):
        dl.download(["nope.pt"], target_dir=str(tmp_path))
