"""The MLX settings `import rvc_mlx` chooses, and that a user's own choice wins."""

import json
import os
import subprocess
import sys

SETTINGS = ("MLX_ENABLE_TF32", "MLX_ENABLE_CACHE_THRASHING_CHECK", "MLX_CUDA_CONV_CACHE_SIZE")


def _settings_after_import(env: dict) -> dict:
    code = f"import os, json, rvc_mlx; print(json.dumps({{k: os.environ.get(k) for k in {SETTINGS!r}}}))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_exact_float32_and_no_cache_thrashing_abort_by_default():
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    assert _settings_after_import(env) == {"MLX_ENABLE_TF32": "0", "MLX_ENABLE_CACHE_THRASHING_CHECK": "0",
                                           "MLX_CUDA_CONV_CACHE_SIZE": "1024"}


def test_the_users_settings_win():
    mine = {"MLX_ENABLE_TF32": "1", "MLX_ENABLE_CACHE_THRASHING_CHECK": "1", "MLX_CUDA_CONV_CACHE_SIZE": "64"}
    assert _settings_after_import({**os.environ, **mine}) == mine
