"""Load HuBERT-base / ContentVec content encoders from every layout users have, into `HubertModel`.

Layouts read:
  * fairseq checkpoints such as RVC's `hubert_base.pt`: a torch.save'd dict whose "model" entry holds fairseq
    names (`feature_extractor.conv_layers.N.0.weight`, `post_extract_proj`, `encoder.pos_conv.0.weight_g`,
    `encoder.layers.N.self_attn.q_proj`, ...) and whose "cfg" (omegaconf) / "args" (argparse) give heads and
    conv strides; read with our safe reader (`torch_pickle`), never with torch;
  * Hugging Face transformers `HubertModel` files: a directory, or `model.safetensors` / `pytorch_model.bin`
    with its `config.json` beside it (names like `encoder.layers.N.attention.q_proj`, an optional `hubert.`
    prefix, weight norm as `weight_g/weight_v` or `parametrizations.weight.original0/1`, ContentVec's extra
    `final_proj`);
  * our native safetensors file (kind "hubert"), written by `convert_hubert`.

Conversion (once, here): HF names are renamed to fairseq names, then every tensor is cast to float32, the
positional conv's weight norm (over dim 2: g has shape (1, 1, K)) is folded, conv weights go from torch's
(C_out, C_in, K) to MLX's (C_out, K, C_in), and q/k/v are fused into one (3C, C) matrix.
"""

from __future__ import annotations

import ast
import json
import os
import re
from dataclasses import asdict

import mlx.core as mx
import numpy as np

from rvc_mlx.checkpoints.native import is_native, load_native, load_strict, save_native
from rvc_mlx.errors import CheckpointError
from rvc_mlx.models.hubert import BASE_CONV_LAYERS, HubertConfig, HubertModel

KIND = "hubert"  # native-file kind

_DEFAULT_HEADS = 12  # HuBERT-base / ContentVec; used when the checkpoint's config cannot be read
# fairseq config entries this loader reads.
_OPTION_KEYS = {"encoder_attention_heads", "conv_feature_layers", "layer_norm_first", "extractor_mode"}
_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # looked for, in order, in an HF directory
# Entries of training-only heads that inference never uses (fairseq, then transformers names).
_IGNORED = re.compile(r"^(mask_emb|label_embs_concat|label_embs\..*|masked_spec_embed|lm_head\..*"
                      r"|projector\..*|classifier\..*|layer_weights)$")

# transformers name -> fairseq name (applied in order, first match wins).
_HF_TO_FAIRSEQ = [
    (r"feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0."),
    (r"feature_extractor\.conv_layers\.(\d+)\.layer_norm\.", r"feature_extractor.conv_layers.\1.2."),
    (r"feature_projection\.layer_norm\.", "layer_norm."),
    (r"feature_projection\.projection\.", "post_extract_proj."),
    (r"encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original0$", "encoder.pos_conv.0.weight_g"),
    (r"encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original1$", "encoder.pos_conv.0.weight_v"),
    (r"encoder\.pos_conv_embed\.conv\.", "encoder.pos_conv.0."),
    (r"encoder\.layers\.(\d+)\.attention\.(q|k|v|out)_proj\.", r"encoder.layers.\1.self_attn.\2_proj."),
    (r"encoder\.layers\.(\d+)\.layer_norm\.", r"encoder.layers.\1.self_attn_layer_norm."),
    (r"encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.", r"encoder.layers.\1.fc1."),
    (r"encoder\.layers\.(\d+)\.feed_forward\.output_dense\.", r"encoder.layers.\1.fc2."),
]


# ---------------------------------------------------------------------------------------------------------
# Reading config values
# ---------------------------------------------------------------------------------------------------------


def _eval_layer_spec(node):
    """Evaluate fairseq's conv_feature_layers expression: literals, lists/tuples, `+` and `*` only."""
    if isinstance(node, ast.Expression):
        return _eval_layer_spec(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.List | ast.Tuple):
        items = [_eval_layer_spec(e) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mult):
        left, right = _eval_layer_spec(node.left), _eval_layer_spec(node.right)
        return left + right if isinstance(node.op, ast.Add) else left * right
    raise ValueError("unsupported expression")


def _parse_conv_layers(spec, source) -> tuple[tuple[int, int, int], ...] | None:
    """fairseq's "[(512,10,5)] + [(512,3,2)] * 4 + ..." as ((channels, kernel, stride), ...) or None."""
    if spec is None:
        return None
    try:
        layers = _eval_layer_spec(ast.parse(str(spec), mode="eval"))
        layers = tuple((int(c), int(k), int(s)) for c, k, s in layers)
    except (SyntaxError, ValueError, TypeError, MemoryError):
        raise CheckpointError(source, f"cannot read conv_feature_layers {str(spec)[:200]!r}") from None
    return layers or None


def _fairseq_options(ckpt: dict) -> dict:
    """The model options a fairseq checkpoint records in `cfg["model"]` (omegaconf) or `args` (argparse)."""
    from rvc_mlx.checkpoints.torch_pickle import to_plain

    for entry in ("cfg", "args"):
        try:
            value = to_plain(ckpt.get(entry))
        except Exception:  # an unreadable config counts as absent: the shapes still say most things
            continue
        for candidate in (value.get("model") if isinstance(value, dict) else None, value):
            if isinstance(candidate, dict) and _OPTION_KEYS & candidate.keys():
                return candidate
    return {}


# ---------------------------------------------------------------------------------------------------------
# Conversion: fairseq-named state dict -> (HubertConfig, native weights)
# ---------------------------------------------------------------------------------------------------------


def _f32(array) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(array), dtype=np.float32)


def _fold_weight_norm(g: np.ndarray, v: np.ndarray) -> np.ndarray:
    """torch weight norm, dim=2: w = g * v / ||v|| (norm over dims 0, 1). g (1, 1, K), v (O, I, K)."""
    v64 = np.asarray(v, dtype=np.float64)
    norm = np.sqrt(np.sum(v64 * v64, axis=(0, 1), keepdims=True))
    return (np.asarray(g, dtype=np.float64).reshape(1, 1, -1) * v64 / norm).astype(np.float32)


def _count(state: dict, pattern: str) -> int:
    """Number of consecutive indices i (from 0) for which pattern.format(i) is a key."""
    n = 0
    while pattern.format(n) in state:
        n += 1
    return n


def convert_fairseq(state: dict, options: dict | None = None, source=None) -> tuple[HubertConfig, dict]:
    """fairseq-named arrays (+ the checkpoint's model options) -> (HubertConfig, name -> float32 array).

    `options` may give `encoder_attention_heads`, `conv_feature_layers`, `layer_norm_first`,
    `extractor_mode`, `layer_norm_eps`; shapes decide everything else. Variants other than HuBERT-base's
    structure (pre-norm "large" models, layer-norm conv extractor, conv bias) raise CheckpointError.
    """
    options = options or {}
    state = {k: v for k, v in state.items() if not _IGNORED.match(k)}
    get = state.get

    if options.get("layer_norm_first"):
        raise CheckpointError(source, "pre-norm HuBERT (layer_norm_first, e.g. large) is not supported")
    layer_norm_convs = "feature_extractor.conv_layers.1.2.1.weight" in state
    if "layer_norm" in str(options.get("extractor_mode", "default")) or layer_norm_convs:
        raise CheckpointError(source, "HuBERT with a layer-norm conv extractor (e.g. large) is not supported")

    n_conv = _count(state, "feature_extractor.conv_layers.{}.0.weight")
    n_layers = _count(state, "encoder.layers.{}.fc1.weight")
    if n_conv == 0 or n_layers == 0 or "post_extract_proj.weight" not in state:
        raise CheckpointError(source, "not a HuBERT/ContentVec checkpoint (no conv feature extractor, "
                              "post_extract_proj and transformer layers found)")
    if any(f"feature_extractor.conv_layers.{i}.0.bias" in state for i in range(n_conv)):
        raise CheckpointError(source, "HuBERT with conv bias is not supported")

    conv_shapes = [np.shape(state[f"feature_extractor.conv_layers.{i}.0.weight"]) for i in range(n_conv)]
    conv_layers = _parse_conv_layers(options.get("conv_feature_layers"), source)
    if conv_layers is None:
        kernels = [s[2] for s in conv_shapes]
        if kernels != [k for _, k, _ in BASE_CONV_LAYERS]:
            raise CheckpointError(source, f"conv kernels {kernels} differ from HuBERT-base and the "
                                  "checkpoint records no conv_feature_layers to take the strides from")
        conv_layers = tuple((shape[0], kernel, stride)
                            for shape, (_, kernel, stride) in zip(conv_shapes, BASE_CONV_LAYERS, strict=True))
    found = tuple((s[0], s[2]) for s in conv_shapes)
    if found != tuple((c, k) for c, k, _ in conv_layers):
        raise CheckpointError(source, f"conv weights (channels, kernel) {found} disagree with the config's "
                              f"conv_feature_layers {conv_layers}")

    hidden = int(np.shape(state["post_extract_proj.weight"])[0])
    heads = int(options.get("encoder_attention_heads") or _DEFAULT_HEADS)
    if hidden % heads:
        raise CheckpointError(source, f"hidden size {hidden} is not divisible by {heads} attention heads")
    if "encoder.pos_conv.0.weight_v" in state:
        pos_shape = np.shape(state["encoder.pos_conv.0.weight_v"])
    elif "encoder.pos_conv.0.weight" in state:
        pos_shape = np.shape(state["encoder.pos_conv.0.weight"])
    else:
        raise CheckpointError(source, "missing weights: encoder.pos_conv.0.weight_g/weight_v")
    final_proj = get("final_proj.weight")
    config = HubertConfig(
        conv_layers=conv_layers,
        hidden_size=hidden,
        num_layers=n_layers,
        num_heads=heads,
        ffn_size=int(np.shape(state["encoder.layers.0.fc1.weight"])[0]),
        pos_conv_kernel=int(pos_shape[2]),
        pos_conv_groups=max(hidden // int(pos_shape[1]), 1),
        final_proj_size=None if final_proj is None else int(np.shape(final_proj)[0]),
        layer_norm_eps=float(options.get("layer_norm_eps", 1e-5)),
    )

    used = set()

    def take(name: str) -> np.ndarray:
        if name not in state:
            raise CheckpointError(source, f"missing weight {name}")
        used.add(name)
        return _f32(state[name])

    out = {}
    for i in range(n_conv):
        conv = take(f"feature_extractor.conv_layers.{i}.0.weight")  # (C_out, C_in, K)
        out[f"feature_extractor.convs.{i}.weight"] = conv.transpose(0, 2, 1)  # (C_out, K, C_in)
    out["feature_extractor.norm.weight"] = take("feature_extractor.conv_layers.0.2.weight")
    out["feature_extractor.norm.bias"] = take("feature_extractor.conv_layers.0.2.bias")
    for ours, theirs in [("feature_norm", "layer_norm"), ("feature_proj", "post_extract_proj"),
                         ("encoder_norm", "encoder.layer_norm")]:
        out[f"{ours}.weight"] = take(f"{theirs}.weight")
        out[f"{ours}.bias"] = take(f"{theirs}.bias")
    if "encoder.pos_conv.0.weight_v" in state:
        pos_w = _fold_weight_norm(take("encoder.pos_conv.0.weight_g"), take("encoder.pos_conv.0.weight_v"))
    else:
        pos_w = take("encoder.pos_conv.0.weight")
    out["pos_conv.weight"] = pos_w.transpose(0, 2, 1)
    out["pos_conv.bias"] = take("encoder.pos_conv.0.bias")
    for n in range(n_layers):
        p, q = f"encoder.layers.{n}.", f"layers.{n}."
        for part in ("weight", "bias"):
            out[f"{q}attn.qkv.{part}"] = np.concatenate(
                [take(f"{p}self_attn.{x}_proj.{part}") for x in "qkv"], axis=0)
            out[f"{q}attn.out.{part}"] = take(f"{p}self_attn.out_proj.{part}")
            out[f"{q}attn_norm.{part}"] = take(f"{p}self_attn_layer_norm.{part}")
            out[f"{q}fc1.{part}"] = take(f"{p}fc1.{part}")
            out[f"{q}fc2.{part}"] = take(f"{p}fc2.{part}")
            out[f"{q}final_norm.{part}"] = take(f"{p}final_layer_norm.{part}")
    if final_proj is not None:
        out["final_proj.weight"] = take("final_proj.weight")
        out["final_proj.bias"] = take("final_proj.bias")
    extra = sorted(set(state) - used)
    if extra:
        raise CheckpointError(source, f"unexpected weights for HuBERT-base: {', '.join(extra[:5])}"
                              + (f" and {len(extra) - 5} more" if len(extra) > 5 else ""))
    return config, {k: np.ascontiguousarray(v) for k, v in out.items()}


def _transformers_options(hf: dict, source) -> dict:
    """fairseq-style options from a transformers config.json dict; unsupported variants raise."""
    if hf.get("feat_extract_norm", "group") != "group":
        raise CheckpointError(source, "HuBERT with a layer-norm conv extractor (e.g. large) is not supported")
    if hf.get("do_stable_layer_norm"):
        raise CheckpointError(source, "pre-norm HuBERT (do_stable_layer_norm, e.g. large) is not supported")
    if hf.get("conv_bias"):
        raise CheckpointError(source, "HuBERT with conv bias is not supported")
    if hf.get("conv_pos_batch_norm"):
        raise CheckpointError(source, "HuBERT with a batch-normed positional conv is not supported")
    if hf.get("feat_proj_layer_norm", True) is False:
        raise CheckpointError(source, "HuBERT without the feature layer norm is not supported")
    for key in ("hidden_act", "feat_extract_activation"):
        if hf.get(key, "gelu") != "gelu":
            raise CheckpointError(source, f"{key}={hf.get(key)!r} is not supported (HuBERT-base uses 'gelu')")
    options = {"layer_norm_eps": hf.get("layer_norm_eps", 1e-5)}
    if hf.get("num_attention_heads"):
        options["encoder_attention_heads"] = hf["num_attention_heads"]
    if all(hf.get(k) for k in ("conv_dim", "conv_kernel", "conv_stride")):
        options["conv_feature_layers"] = str(list(zip(hf["conv_dim"], hf["conv_kernel"], hf["conv_stride"],
                                                      strict=False)))
    return options


def convert_transformers(
    state: dict, hf_config: dict | None = None, source=None
) -> tuple[HubertConfig, dict]:
    """transformers `HubertModel` arrays (+ its config.json dict) -> (HubertConfig, name -> float32 array)."""
    if any(k.startswith("hubert.") for k in state):
        state = {k.removeprefix("hubert."): v for k, v in state.items()}
    renamed = {}
    for key, value in state.items():
        for pattern, replacement in _HF_TO_FAIRSEQ:
            new, hits = re.subn("^" + pattern, replacement, key)
            if hits:
                key = new
                break
        renamed[key] = value
    return convert_fairseq(renamed, _transformers_options(hf_config or {}, source), source)


# ---------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------


def _layout(state: dict) -> str | None:
    if "post_extract_proj.weight" in state:
        return "fairseq"
    if {"feature_projection.projection.weight", "hubert.feature_projection.projection.weight"} & state.keys():
        return "transformers"
    return None


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(path, f"cannot read the transformers config ({e})") from None
    if not isinstance(value, dict):
        raise CheckpointError(path, "the transformers config is not a JSON object")
    return value


def _read_safetensors(path: str) -> dict:
    try:
        arrays = mx.load(path, format="safetensors")
    except (RuntimeError, ValueError, OSError) as e:
        raise CheckpointError(path, f"not a readable safetensors file ({e})") from None
    return {k: np.array(v.astype(mx.float32) if mx.issubdtype(v.dtype, mx.floating) else v)
            for k, v in arrays.items()}


def _not_hubert(path: str, obj) -> CheckpointError:
    if isinstance(obj, dict) and "weight" in obj and ("config" in obj or "params" in obj):
        return CheckpointError(path, "this is an RVC voice model, not a HuBERT/ContentVec content encoder")
    return CheckpointError(path, "not a HuBERT/ContentVec checkpoint (neither fairseq nor transformers "
                           "HubertModel weights found)")


def read_hubert(path: str | os.PathLike) -> tuple[HubertConfig, dict[str, np.ndarray]]:
    """Any supported layout -> (HubertConfig, native name -> float32 numpy array). Raises CheckpointError."""
    path = os.fspath(path)
    if os.path.isdir(path):
        found = [os.path.join(path, f) for f in _HF_WEIGHT_FILES if os.path.isfile(os.path.join(path, f))]
        if not found:
            raise CheckpointError(path, f"a directory without {' or '.join(_HF_WEIGHT_FILES)}")
        return read_hubert(found[0])
    if not os.path.isfile(path):
        raise CheckpointError(path, "file not found")
    if is_native(path):
        arrays, meta = load_native(path, KIND)
        return _config_from_meta(meta, path), {k: np.array(v) for k, v in arrays.items()}

    hf_json = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    hf_config = _read_json(hf_json) if os.path.isfile(hf_json) else None
    if path.endswith(".safetensors"):
        state = _read_safetensors(path)
        if _layout(state) != "transformers":
            raise _not_hubert(path, state)
        return convert_transformers(state, hf_config, path)

    from rvc_mlx.checkpoints import torch_pickle

    obj = torch_pickle.load(path)
    options = {}
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):  # fairseq: {"model", "cfg"/"args", ...}
        options = _fairseq_options(obj)
        obj = obj["model"]
    state = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, np.ndarray)} \
        if isinstance(obj, dict) else {}
    layout = _layout(state)
    if layout == "fairseq":
        return convert_fairseq(state, options, path)
    if layout == "transformers":
        return convert_transformers(state, hf_config, path)
    raise _not_hubert(path, obj)


def _config_from_meta(meta: dict, path: str) -> HubertConfig:
    try:
        fields = dict(meta["config"])
        fields["conv_layers"] = tuple(tuple(int(x) for x in layer) for layer in fields["conv_layers"])
        return HubertConfig(**fields)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(path, f"the HuBERT config in the file's metadata is unreadable ({e})") from None


def load_hubert(path: str | os.PathLike) -> HubertModel:
    """A ready HubertModel (float32) from a fairseq `.pt`, a transformers directory/file, or a native file."""
    path = os.fspath(path)
    if os.path.isfile(path) and is_native(path):
        weights, meta = load_native(path, KIND)
        config = _config_from_meta(meta, path)
    else:
        config, arrays = read_hubert(path)
        weights = {k: mx.array(v) for k, v in arrays.items()}
    model = HubertModel(config)
    load_strict(model, weights, path)
    mx.eval(model.parameters())
    return model


def convert_hubert(src: str | os.PathLike, dst: str | os.PathLike) -> HubertConfig:
    """Write the HuBERT checkpoint `src` (any supported layout) as a native file `dst`; returns its config.

    The result loads without any conversion work and is checked against the model's parameters first.
    """
    config, arrays = read_hubert(src)
    load_strict(HubertModel(config), {k: mx.array(v) for k, v in arrays.items()}, src)
    save_native(dst, arrays, KIND, meta={"config": asdict(config)}, source=src)
    return config
