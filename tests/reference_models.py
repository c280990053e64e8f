"""Random-weight models in the real file layouts, with their PyTorch references (test and benchmark use).

Builds on the per-network test helpers (each network's parity test owns its reference construction):
a voice ``.pth`` (rvc 0.3.5 classes), HuBERT as RVC's fairseq ``hubert_base.pt`` (weights from a
transformers ``HubertModel``; fairseq itself is not installable here) and ``rmvpe.pt``; plus a faiss
IVF index. The references are what RVC runs: the float16-rounded weights in float32.
"""

from __future__ import annotations

import os
import sys
import types

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))

from test_hubert import _reference_model, _to_fairseq  # noqa: E402
from test_rmvpe import _randomize_batch_norms  # noqa: E402
from test_synthesizer import make_voice  # noqa: E402

__all__ = ["make_voice", "make_hubert", "make_rmvpe", "make_index", "FairseqHubert", "reference_config"]

# HuBERT with base's width (RVC's voices take 768-d, or 256-d after final_proj) and 12 post-norm layers,
# but a small FFN and conv front end to keep tests fast.
HUBERT_TEST = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=256,
                   conv_dim=(64,) * 7)
HUBERT_CONV_KERNELS_STRIDES = ((10, 5),) + ((3, 2),) * 4 + ((2, 2),) * 2  # fairseq base's conv front end


def hubert_conv_spec(conv_dim) -> str:
    """fairseq's ``conv_feature_layers`` for base's kernels and strides with the given channels per layer."""
    return str([(c, k, s) for c, (k, s) in zip(conv_dim, HUBERT_CONV_KERNELS_STRIDES, strict=True)])


class FairseqHubert(torch.nn.Module):
    """What RVC's pipeline calls on fairseq's HubertModel: extract_features(...)[0] and final_proj."""

    def __init__(self, model, final_proj):
        super().__init__()
        self.model = model
        self.final_proj = final_proj

    def extract_features(self, source, padding_mask=None, output_layer=None):
        with torch.no_grad():
            out = self.model(source.float(), output_hidden_states=True)
        return (out.hidden_states[output_layer],)


def make_hubert(path, seed: int = 0, **overrides):
    """Write a fairseq-layout ``hubert_base.pt`` (float16 weights) -> the matching FairseqHubert."""
    from omegaconf import OmegaConf

    config = {**HUBERT_TEST, **overrides}
    model = _reference_model(seed, **config)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.manual_seed(seed + 1)
    proj = torch.nn.Linear(config["hidden_size"], 256)
    weights = {k: v.half() for k, v in _to_fairseq(state).items()}
    weights.update({"final_proj.weight": proj.weight.detach().half(),
                    "final_proj.bias": proj.bias.detach().half(),
                    "label_embs_concat": torch.randn(504, 256).half()})
    cfg = OmegaConf.create({"model": {
        "_name": "hubert", "extractor_mode": "default", "encoder_layers": config["num_hidden_layers"],
        "encoder_embed_dim": config["hidden_size"], "encoder_ffn_embed_dim": config["intermediate_size"],
        "encoder_attention_heads": config["num_attention_heads"], "layer_norm_first": False,
        "conv_feature_layers": hubert_conv_spec(config["conv_dim"]), "conv_bias": False, "final_dim": 256}})
    torch.save({"model": weights, "cfg": cfg, "args": None}, path)
    half_model = _reference_model(seed, **config)
    half_model.load_state_dict({k: v.half().float() for k, v in state.items()})
    half_proj = torch.nn.Linear(config["hidden_size"], 256)
    half_proj.load_state_dict({k: v.half().float() for k, v in proj.state_dict().items()})
    return FairseqHubert(half_model.eval(), half_proj.eval())


def make_rmvpe(path, seed: int = 0, voiced_logit: float = 0.0):
    """Write a random full-size ``rmvpe.pt``. The salience head's bias is shifted by ``voiced_logit`` so that
    random weights still give a mix of voiced and unvoiced frames around the 0.03 threshold."""
    from rvc.lib.rmvpe import E2E

    torch.manual_seed(seed)
    e2e = E2E(4, 1, (2, 2)).eval()
    _randomize_batch_norms(e2e, seed + 1)
    with torch.no_grad():
        e2e.fc[1].bias.add_(voiced_logit)
    torch.save(e2e.state_dict(), path)
    return path


def make_index(path, dim: int, n_vectors: int = 600, n_lists: int = 16, seed: int = 0) -> str:
    """Write an RVC-style faiss IVF-Flat index of random vectors (nprobe 1, as RVC sets it)."""
    import faiss

    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n_vectors, dim)).astype(np.float32)
    index = faiss.index_factory(dim, f"IVF{n_lists},Flat")
    index.train(vectors)
    index.add(vectors)
    index.nprobe = 1
    faiss.write_index(index, str(path))
    return str(path)


def reference_config(x_pad=1, x_query=6, x_center=38, x_max=41):
    """The fields of rvc's Config that its Pipeline reads (fp32 on CPU)."""
    return types.SimpleNamespace(x_pad=x_pad, x_query=x_query, x_center=x_center, x_max=x_max,
                                 is_half=False, device="cpu")
