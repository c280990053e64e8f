"""rvc-mlx: Retrieval-based Voice Conversion inference on MLX."""

import os

from rvc_mlx import _blas

# MLX runs float32 matmuls and convolutions at TF32 precision on CUDA (and recent Apple GPUs) unless told
# not to; that costs ~1e-3 relative error against the reference. Exact float32 is the default here; set
# MLX_ENABLE_TF32=1 before importing rvc_mlx to trade that precision for speed.
os.environ.setdefault("MLX_ENABLE_TF32", "0")
# MLX's CUDA back end keeps LRU caches of cuDNN convolution plans, FFT plans and CUDA graphs, and by default
# aborts the process once a cache has missed twice its capacity over the process's lifetime (the conv cache:
# 256 misses, i.e. a handful of distinct input lengths; measured on an H100). Converting many recordings of
# different lengths is this package's normal use, so the caches stay plain LRU caches unless the user says
# otherwise.
os.environ.setdefault("MLX_ENABLE_CACHE_THRASHING_CHECK", "0")
# The cuDNN plan cache holds 128 convolution shapes by default; one v2 48 kHz conversion uses 87 (decoder
# chunks, flow, text encoder), so a second input length would evict the first's plans.
os.environ.setdefault("MLX_CUDA_CONV_CACHE_SIZE", "1024")
_blas.ensure_fast_blas()  # must precede the first `import mlx.core`

__version__ = "0.1.0"


def __getattr__(name):  # the public API, imported on first use so `import rvc_mlx` stays light
    if name == "VoiceConverter":
        from rvc_mlx.pipeline import VoiceConverter

        return VoiceConverter
    if name == "ConversionOptions":
        from rvc_mlx.pipeline import ConversionOptions

        return ConversionOptions
    if name == "estimate_f0":
        from rvc_mlx.pitch import estimate_f0

        return estimate_f0
    raise AttributeError(f"module 'rvc_mlx' has no attribute {name!r}")
