"""rvc-mlx: Retrieval-based Voice Conversion inference on MLX."""

from rvc_mlx import _blas

_blas.ensure_fast_blas()  # must precede the first `import mlx.core`

__version__ = "0.1.0"
