"""Compute precision of the networks: float32, or float16 / bfloat16 on GPU back ends.

A half precision casts the weights of the synthesizer, HuBERT and RMVPE once (when a `VoiceConverter` is
built) and runs their matrix and element-wise work in that dtype. What stays float32, because it is
numerically fragile or cheap:

* audio in and out, the high-pass, RMS mixing, resampling (numpy float32/float64, as always);
* RMVPE's STFT, mel and log, its input batch norm (``unet.input_scale``/``input_shift``), the final sigmoid
  and the salience decoding to f0 (the logits are cast to float32 before the sigmoid);
* the NSF source: f0, the sine phase (float32/float64 running sums) and ``m_source.l_linear``; its output is
  cast to the decoder's dtype only where it meets the noise convolutions;
* the decoder's last convolution ``conv_post`` and tanh (the waveform), and the synthesizer's output;
* HuBERT's first convolution and its GroupNorm (per-channel statistics over the whole input), and the
  content features handed to retrieval (cast back to float32 so the index search is unchanged);
* LayerNorm statistics (``mx.fast.layer_norm`` accumulates in float32) and the attention softmaxes
  (``mx.softmax(..., precise=True)`` / ``mx.fast.scaled_dot_product_attention``).

MLX's CPU back end runs half-precision matmuls ~20x slower than float32 (no half GEMM), so the CPU device
only takes float32: asking for a half precision there raises `RVCError`, unless the environment variable
``RVC_MLX_CPU_HALF=1`` is set (tests and quality measurements: the numbers match a GPU's to within rounding
order, only slower). ``"auto"`` is float32 on the CPU and `AUTO_GPU_PRECISION` on a GPU.
"""

from __future__ import annotations

import os

from rvc_mlx.errors import RVCError

PRECISIONS = ("auto", "float32", "float16", "bfloat16")  # the names `precision=` accepts
HALF_PRECISIONS = ("float16", "bfloat16")  # the ones that need a GPU back end
# What "auto" means on a GPU back end, from benchmarks/precision_quality.py and an H100 timing (30 s of audio,
# full-size models, warm): float16 converts 1.6x faster than float32 (synthesizer 2.6x) at a synthesizer SNR
# of ~52 dB (log-mel distance 0.03 dB); bfloat16 is slower than float16 (1.4x) and ~17 dB noisier. The default
# precision stays float32 (the reference's output); "auto" picks the fast one.
AUTO_GPU_PRECISION = "float16"
CPU_HALF_ENV = "RVC_MLX_CPU_HALF"  # "1": allow float16/bfloat16 on the CPU device (tests, measurements)
# (mlx.core is imported in the functions: the CLI reads PRECISIONS without loading MLX)


def on_cpu() -> bool:
    """True when MLX's default device is the CPU."""
    import mlx.core as mx

    return mx.default_device() == mx.cpu


def mlx_dtype(precision: str):
    """"float32", "float16" or "bfloat16" -> the mlx.core dtype."""
    import mlx.core as mx

    return {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}[precision]


def resolve_precision(precision: str) -> str:
    """A `PRECISIONS` name -> "float32", "float16" or "bfloat16" for the current default device.

    Raises RVCError for an unknown name, or for a half precision on the CPU device (see the module
    docstring for the ``RVC_MLX_CPU_HALF`` override).
    """
    if precision not in PRECISIONS:
        raise RVCError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "float32" if on_cpu() else AUTO_GPU_PRECISION
    if precision in HALF_PRECISIONS and on_cpu() and os.environ.get(CPU_HALF_ENV) != "1":
        raise RVCError(
            f"precision {precision!r} needs a GPU back end (Metal or CUDA); the CPU device runs float32 "
            "only (MLX has no fast half-precision matmul on the CPU). Use precision 'float32' or 'auto'.")
    return precision


def float32_prefixes(model) -> tuple[str, ...]:
    """Parameter-name prefixes of ``model`` that stay float32 at any precision (see the module docstring)."""
    from rvc_mlx.models.hubert import HubertModel
    from rvc_mlx.models.rmvpe import RMVPE
    from rvc_mlx.models.synthesizer import Synthesizer

    if isinstance(model, Synthesizer):
        return ("dec.m_source.", "dec.conv_post.")
    if isinstance(model, HubertModel):
        return ("feature_extractor.convs.0.", "feature_extractor.norm.")
    if isinstance(model, RMVPE):
        return ("unet.input_scale", "unet.input_shift")
    return ()


def cast_model(model, precision: str):
    """Cast ``model``'s floating-point parameters in place to ``precision`` ("float32", "float16",
    "bfloat16"), except those under `float32_prefixes`, which become float32. Returns the model.

    Only arrays whose dtype changes are replaced (a float32 model at "float32" is left untouched). Layers
    that cache a derived weight layout (`rvc_mlx.models.conv`) rebuild it for the new array.
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    dtype = mlx_dtype(precision)
    keep = float32_prefixes(model)
    updates = []
    for name, value in tree_flatten(model.parameters()):
        if not mx.issubdtype(value.dtype, mx.floating):
            continue
        target = mx.float32 if name.startswith(keep) else dtype
        if value.dtype != target:
            updates.append((name, value.astype(target)))
    if updates:
        model.update(tree_unflatten(updates))
        mx.eval([value for _, value in updates])
    return model


def parameter_dtypes(model) -> dict[str, int]:
    """How many parameters of ``model`` are stored in each dtype: {"float16": 12345, "float32": 67, ...}."""
    from mlx.utils import tree_flatten

    counts: dict[str, int] = {}
    for _, value in tree_flatten(model.parameters()):
        name = str(value.dtype).split(".")[-1]
        counts[name] = counts.get(name, 0) + value.size
    return counts
