"""Fetch the shared models (HuBERT base, RMVPE) from the Hugging Face hub into the models directory.

Each file is checked against the SHA-256 the hub publishes for it (the ETag of a large-file-storage
object is its SHA-256) before it is moved into place; a mismatch deletes the download and raises.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass

from rvc_mlx.errors import RVCError
from rvc_mlx.paths import models_dir


@dataclass(frozen=True)
class HubFile:
    repo_id: str  # Hugging Face model repository
    filename: str  # path of the file in the repository
    sha256: str | None = None  # pinned digest; None: take the one the hub publishes


# The files RVC's WebUI downloads; the keys are the names stored under the models directory.
SHARED_MODELS = {
    "hubert_base.pt": HubFile("lj1995/VoiceConversionWebUI", "hubert_base.pt"),
    "rmvpe.pt": HubFile("lj1995/VoiceConversionWebUI", "rmvpe.pt"),
}


def sha256_of(path: str, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def _hub():
    try:
        import huggingface_hub
    except ImportError as e:
        raise RVCError("downloading needs huggingface_hub: pip install 'rvc-mlx[download]'") from e
    return huggingface_hub


def published_sha256(item: HubFile) -> str:
    """The SHA-256 the hub publishes for a large file (its ETag), or the pinned one."""
    if item.sha256:
        return item.sha256
    hub = _hub()
    meta = hub.get_hf_file_metadata(hub.hf_hub_url(item.repo_id, item.filename))
    etag = (meta.etag or "").strip('"').lower()
    if len(etag) != 64 or any(c not in "0123456789abcdef" for c in etag):
        raise RVCError(f"the hub publishes no SHA-256 for {item.repo_id}/{item.filename}")
    return etag


def download(names: list[str] | None = None, *, target_dir: str | None = None,
             force: bool = False) -> dict[str, str]:
    """Download the named shared models (default: all) into ``target_dir`` (default: models dir).

    Returns {name: path}. Files already present with the right digest are kept. Nothing is left
    behind on failure: each file is downloaded to a temporary folder, verified, then moved in.
    """
    target = target_dir or models_dir()
    os.makedirs(target, exist_ok=True)
    hub = _hub()
    done = {}
    for name in names or list(SHARED_MODELS):
        if name not in SHARED_MODELS:
            raise RVCError(f"unknown model {name!r}; choose from {', '.join(SHARED_MODELS)}")
        item = SHARED_MODELS[name]
        expected = published_sha256(item)
        final = os.path.join(target, name)
        if not force and os.path.exists(final) and sha256_of(final) == expected:
            done[name] = final
            continue
        with tempfile.TemporaryDirectory(dir=target, prefix=".download-") as tmp:
            fetched = hub.hf_hub_download(item.repo_id, item.filename, local_dir=tmp)
            actual = sha256_of(fetched)
            if actual != expected:
                raise RVCError(f"{item.repo_id}/{item.filename}: SHA-256 {actual} does not match the "
                               f"published {expected}; the download was discarded")
            shutil.move(fetched, final + ".part")
            os.replace(final + ".part", final)
        done[name] = final
    return done
