"""Shared test set-up: the PyTorch reference code (test-only) and small helpers.

torch and the reference packages are test dependencies only. torchaudio has no build for torch 2.13 and the
reference model code never calls it, so a stub module stands in where an import chain reaches it.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest


def _stub_torchaudio() -> None:
    if "torchaudio" in sys.modules:
        return
    try:  # transformers probes torchaudio's module spec: import it before the stand-in exists
        import transformers  # noqa: F401
    except Exception:
        pass
    try:
        import torchaudio  # noqa: F401
    except Exception:
        stub = types.ModuleType("torchaudio")
        stub.transforms = types.ModuleType("torchaudio.transforms")

        class Resample:  # torchfcpe imports the name; the tests feed 16 kHz so it is never called
            def __init__(self, *args, **kwargs):
                raise RuntimeError("torchaudio stub: resampling is not available in tests")

        stub.transforms.Resample = Resample
        sys.modules["torchaudio"] = stub
        sys.modules["torchaudio.transforms"] = stub.transforms


_stub_torchaudio()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def rel_err(ours, ref) -> float:
    """max|ours − ref| / max|ref| (the parity measure the tests state their tolerances in)."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-30))
