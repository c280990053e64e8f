"""Where shared models (HuBERT, RMVPE, ...) live: ``$RVC_MLX_HOME`` or ``~/.cache/rvc-mlx``."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV_VAR = "RVC_MLX_HOME"  # environment variable that overrides the models directory
DEFAULT_MODELS_DIR = Path("~/.cache/rvc-mlx")  # used when the variable is unset or empty (~ expanded)


def models_dir() -> Path:
    """The models directory (read from the environment on each call; not created here)."""
    value = os.environ.get(HOME_ENV_VAR, "").strip()
    return Path(value).expanduser() if value else DEFAULT_MODELS_DIR.expanduser()


def default_model_path(filename: str) -> Path:
    """``models_dir() / filename``, e.g. ``default_model_path("rmvpe.pt")``."""
    return models_dir() / filename
