"""The bidirectional GRU (models/gru.py) against torch.nn.GRU: both recurrences (the kernel on CUDA only)."""

import mlx.core as mx
import numpy as np
import pytest
import torch

from rvc_mlx.models.gru import BiGRU, cuda_available

KERNELS = ["plain"] + (["cuda"] if cuda_available() else [])
TOLERANCE = 2e-5  # max abs difference of the (B, T, 2H) outputs (values within -1..1)


def _pair(d_in: int, hidden: int, seed: int) -> tuple[torch.nn.GRU, BiGRU]:
    """A random torch GRU and ours with its weights (PyTorch layout -> ours, as checkpoints/rmvpe.py does)."""
    torch.manual_seed(seed)
    ref = torch.nn.GRU(d_in, hidden, batch_first=True, bidirectional=True).eval()
    sd = {k: v.detach().double().numpy() for k, v in ref.state_dict().items()}
    w_ih, b_ih, w_hh, b_hn = [], [], [], []
    for suffix in ("", "_reverse"):
        bi, bh = sd[f"bias_ih_l0{suffix}"].copy(), sd[f"bias_hh_l0{suffix}"]
        bi[: 2 * hidden] += bh[: 2 * hidden]
        w_ih.append(sd[f"weight_ih_l0{suffix}"].T)
        b_ih.append(bi)
        w_hh.append(sd[f"weight_hh_l0{suffix}"].T)
        b_hn.append(bh[None, 2 * hidden :])
    ours = BiGRU(d_in, hidden)
    ours.update({"w_ih": mx.array(np.concatenate(w_ih, 1).astype(np.float32)),
                 "b_ih": mx.array(np.concatenate(b_ih).astype(np.float32)),
                 "w_hh": mx.array(np.stack(w_hh).astype(np.float32)),
                 "b_hn": mx.array(np.stack(b_hn).astype(np.float32))})
    return ref, ours


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("d_in,hidden,batch,frames", [(384, 256, 1, 150), (12, 8, 3, 37)])
def test_bigru_matches_torch(kernel, d_in, hidden, batch, frames):
    ref, ours = _pair(d_in, hidden, seed=frames)
    x = np.random.default_rng(0).standard_normal((batch, frames, d_in)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x))[0].numpy()
    got = np.array(ours(mx.array(x), kernel=kernel))
    assert got.shape == want.shape
    err = np.abs(got - want).max()
    print(f"\n{kernel} H={hidden}: max abs {err:.2e}")
    assert err <= TOLERANCE


def test_plain_is_the_default_off_cuda(monkeypatch):
    from rvc_mlx.models import gru

    monkeypatch.setenv("RVC_MLX_GRU", "plain")
    assert not gru.cuda_kernel_usable(256)
    monkeypatch.delenv("RVC_MLX_GRU")
    assert gru.cuda_kernel_usable(256) == (cuda_available() and mx.default_device() == mx.gpu)
    assert not gru.cuda_kernel_usable(512)  # 3 * 512 threads do not fit one block
