"""Feature index: our faiss-file reader and MLX search/blend against faiss itself and RVC's blend formula.

Indexes are built the way RVC's training writes them (``index_factory(d, "IVF<n>,Flat")``, nprobe 1,
``train`` + ``add``, ``faiss.write_index``) on clustered random vectors, small (2000 x 256/768, IVF32).
"""

from __future__ import annotations

import sys

import rvc_mlx  # noqa: F401  (loads OpenBLAS before mlx.core)

# isort: split
import mlx.core as mx
import numpy as np
import pytest
from conftest import rel_err

from rvc_mlx.errors import CheckpointError
from rvc_mlx.index import FLT_MAX, FeatureIndex, read_faiss_index

faiss = pytest.importorskip("faiss")


def _clustered(rng, n, d, centres=40):
    c = rng.standard_normal((centres, d)).astype(np.float32)
    return (c[rng.integers(0, centres, n)] + 0.4 * rng.standard_normal((n, d))).astype(np.float32)


def _write_rvc_index(path, x, nlist, train=None):
    index = faiss.index_factory(x.shape[1], f"IVF{nlist},Flat")
    faiss.extract_index_ivf(index).nprobe = 1
    index.train(x if train is None else train)
    index.add(x)
    faiss.write_index(index, str(path))
    return index


@pytest.fixture(scope="module", params=[256, 768], ids=["v1-256", "v2-768"])
def built(request, tmp_path_factory):
    d = request.param
    rng = np.random.default_rng(d)
    x = _clustered(rng, 2000, d)
    path = tmp_path_factory.mktemp("idx") / f"added_IVF32_Flat_nprobe_1_test_{d}.index"
    _write_rvc_index(path, x, 32)
    ref = faiss.read_index(str(path))  # as RVC's pipeline loads it
    queries = np.concatenate([x[:300] + 0.2 * rng.standard_normal((300, d)),  # near stored vectors
                              _clustered(rng, 300, d),  # fresh points of the mixture
                              rng.standard_normal((20, d))]).astype(np.float32)  # far from everything
    return path, ref, queries


def _assert_same_neighbours(ids, dist, ref_ids, ref_dist, tie_rtol=2e-6):
    """ids identical, except positions whose reference distance ties a neighbour's at float32 precision."""
    ids, dist = np.asarray(ids), np.asarray(dist)
    assert ids.shape == ref_ids.shape and ids.dtype == np.int32
    finite = ref_dist < FLT_MAX
    assert np.array_equal(finite, dist < FLT_MAX) and np.array_equal(ref_ids[~finite], ids[~finite])
    assert rel_err(dist[finite], ref_dist[finite]) <= 1e-4
    rows, cols = np.nonzero(ids != ref_ids)
    for r, c in zip(rows, cols, strict=True):
        gaps = np.abs(ref_dist[r] - ref_dist[r, c])
        gaps[c] = np.inf
        assert gaps.min() <= tie_rtol * ref_dist[r, c], (r, ids[r], ref_ids[r], ref_dist[r])
    assert len(set(rows)) <= 0.005 * len(ids)


def test_reader_matches_faiss(built):
    path, ref, _ = built
    arrays = read_faiss_index(path)
    assert arrays["vectors"].dtype == np.float32
    np.testing.assert_array_equal(arrays["vectors"], ref.reconstruct_n(0, ref.ntotal))  # RVC's big_npy
    np.testing.assert_array_equal(arrays["centroids"], ref.quantizer.reconstruct_n(0, ref.nlist))
    invlists = ref.invlists
    for list_no in range(ref.nlist):
        ids = faiss.rev_swig_ptr(invlists.get_ids(list_no), invlists.list_size(list_no))
        assert (arrays["assign"][ids] == list_no).all()
    assert int(arrays["nprobe"][0]) == ref.nprobe == 1
    assert FeatureIndex.load(path).to_faiss_bytes() == path.read_bytes()  # our writer gives the same bytes


def test_exact_search_equals_brute_force(built):
    path, ref, queries = built
    index = FeatureIndex.load(path)
    dist, ids = index.search(queries, k=8)
    x = ref.reconstruct_n(0, ref.ntotal).astype(np.float64)
    q = queries.astype(np.float64)
    full = (q * q).sum(1)[:, None] - 2 * q @ x.T + (x * x).sum(1)[None]  # float64 brute force
    bf_ids = np.argsort(full, axis=1, kind="stable")[:, :8]
    bf_dist = np.take_along_axis(full, bf_ids, axis=1)
    _assert_same_neighbours(ids, dist, bf_ids, bf_dist)
    assert rel_err(dist, bf_dist) <= 1e-6


@pytest.mark.parametrize("mode", ["ivf", "faiss"])
def test_ivf_modes_equal_faiss_nprobe_1(built, mode):
    path, ref, queries = built
    ref_dist, ref_ids = ref.search(queries, 8)
    dist, ids = FeatureIndex.load(path).search(queries, k=8, mode=mode)
    _assert_same_neighbours(ids, dist, ref_ids, ref_dist)
    # IVF nprobe 1 is not exact search: the test data must show the difference the docstring describes
    _, exact_ids = FeatureIndex.load(path).search(queries, k=8, mode="exact")
    assert (np.asarray(exact_ids) != ref_ids).any(axis=1).mean() > 0.05


def test_ivf_nprobe_above_1_equals_faiss(built):
    path, _, queries = built
    arrays = read_faiss_index(path)
    arrays["nprobe"][0] = 3
    ref = faiss.read_index(str(path))
    ref.nprobe = 3
    ref_dist, ref_ids = ref.search(queries, 8)
    dist, ids = FeatureIndex.from_arrays(arrays).search(queries, k=8, mode="ivf")
    _assert_same_neighbours(ids, dist, ref_ids, ref_dist)


@pytest.mark.parametrize("nprobe", [1, 3])
def test_ivf_device_layout_equals_faiss(built, nprobe):
    # the GPU plan (every row meets max_chunks chunks, padding chunk included) run here on the CPU
    path, _, queries = built
    arrays = read_faiss_index(path)
    arrays["nprobe"][0] = nprobe
    ref = faiss.read_index(str(path))
    ref.nprobe = nprobe
    ref_dist, ref_ids = ref.search(queries, 8)
    index = FeatureIndex.from_arrays(arrays)
    index.pairs_on_host = False
    dist, ids = index.search(queries, k=8, mode="ivf")
    _assert_same_neighbours(ids, dist, ref_ids, ref_dist)


def test_ivf_skewed_and_empty_lists(tmp_path, rng):
    # the clustering is trained with 3 points of a blob that then gets 900 vectors: one list of ~900
    # (15 chunks of 64) beside lists of a few vectors, and lists left empty (trained on far points):
    # both plans, nprobe 1 and 2, against faiss
    d = 32
    big = 0.3 * rng.standard_normal((900, d)).astype(np.float32)
    small = _clustered(rng, 300, d, centres=12) + 4
    x = np.concatenate([big, small])[rng.permutation(1200)]
    train = np.concatenate([small, big[:3], 40 + rng.standard_normal((200, d)).astype(np.float32)])
    path = tmp_path / "skewed.index"
    ref = _write_rvc_index(path, x, 24, train=train)
    index = FeatureIndex.load(path)
    sizes = np.bincount(np.asarray(index.assign), minlength=24)
    assert sizes.max() > 10 * np.median(sizes[sizes > 0]) and (sizes == 0).any() and index.max_chunks > 4
    q = np.concatenate([x[:200] + 0.05 * rng.standard_normal((200, d)),
                        40 + rng.standard_normal((20, d))]).astype(np.float32)  # last rows: empty lists
    for nprobe in (1, 2):
        ref.nprobe = index.nprobe = nprobe
        ref_dist, ref_ids = ref.search(q, 8)
        assert (ref_ids[-20:] == -1).any()
        for host in (True, False):
            index.pairs_on_host = host
            dist, ids = index.search(q, k=8, mode="ivf")
            _assert_same_neighbours(ids, dist, ref_ids, ref_dist)


def test_exact_ties_follow_faiss_id_order(tmp_path, rng):
    # 12 copies of one vector under scattered ids: the 8 nearest tie exactly, faiss keeps the lowest ids
    d = 64
    x = _clustered(rng, 600, d, centres=6)
    copies = np.sort(rng.choice(600, 12, replace=False))
    x[copies] = x[copies[0]]
    path = tmp_path / "ties.index"
    ref = _write_rvc_index(path, x, 8)
    q = (x[copies[:1]] + 0.01 * rng.standard_normal((30, d))).astype(np.float32)
    ref_dist, ref_ids = ref.search(q, 8)
    assert (ref_ids == copies[:8]).all()
    index = FeatureIndex.load(path)
    for host in (True, False):
        index.pairs_on_host = host
        dist, ids = index.search(q, k=8, mode="ivf")
        np.testing.assert_array_equal(np.asarray(ids), ref_ids)
        assert (np.asarray(dist) == np.asarray(dist)[:, :1]).all()  # bit-identical distances
    np.testing.assert_array_equal(np.asarray(index.search(q, k=8)[1]), ref_ids)  # exact mode too


def _rvc_blend(feats, index, big_npy, index_rate, is_half):
    """Pipeline.vc's retrieval block (rvc/modules/vc/pipeline.py), transcribed with torch and faiss."""
    import torch

    feats = torch.from_numpy(feats)[None]  # (1, T, D), the layout vc() has
    npy = feats[0].cpu().numpy()
    if is_half:
        npy = npy.astype("float32")
    score, ix = index.search(npy, k=8)
    weight = np.square(1 / score)
    weight /= weight.sum(axis=1, keepdims=True)
    npy = np.sum(big_npy[ix] * np.expand_dims(weight, axis=2), axis=1)
    if is_half:
        npy = npy.astype("float16")
    feats = torch.from_numpy(npy).unsqueeze(0) * index_rate + (1 - index_rate) * feats
    return feats[0].numpy()


@pytest.mark.parametrize("mode", ["ivf", "faiss"])
def test_blend_equals_rvc(built, mode):
    path, ref, queries = built
    big_npy = ref.reconstruct_n(0, ref.ntotal)
    index = FeatureIndex.load(path)
    for rate in (0.75, 1.0):
        want = _rvc_blend(queries, ref, big_npy, rate, is_half=False)
        got = index.blend(mx.array(queries), rate, mode=mode)
        assert got.dtype == mx.float32
        assert rel_err(np.array(got), want) <= 1e-5
    want = _rvc_blend(queries.astype(np.float16), ref, big_npy, 0.75, is_half=True)
    got = index.blend(mx.array(queries.astype(np.float16)), 0.75, mode=mode)
    assert got.dtype == mx.float16
    assert rel_err(np.array(got), want) <= 2e-3  # float16 rounding of the mix
    np.testing.assert_array_equal(np.array(index.blend(queries, 0.0, mode=mode)), queries)


def test_exact_blend_equals_formula_on_brute_force(built):
    path, ref, queries = built
    big_npy = ref.reconstruct_n(0, ref.ntotal)

    class BruteForce:  # the faiss search interface RVC calls, answered exactly
        def search(self, q, k):
            q, x = q.astype(np.float64), big_npy.astype(np.float64)
            full = (q * q).sum(1)[:, None] - 2 * q @ x.T + (x * x).sum(1)[None]
            ix = np.argsort(full, axis=1)[:, :k]
            return np.take_along_axis(full, ix, axis=1).astype(np.float32), ix

    want = _rvc_blend(queries[:200], BruteForce(), big_npy, 0.6, is_half=False)
    got = FeatureIndex.load(path).blend(queries[:200], 0.6)
    assert rel_err(np.array(got), want) <= 1e-5


def test_missing_neighbours_and_sparse_lists(tmp_path, rng):
    # 10 vectors over 32 lists: faiss writes the sparse ("sprs") layout and most lists hold < 8 vectors,
    # so nprobe-1 search returns ids -1 at FLT_MAX, which the blend weighs 0
    d = 16
    train = rng.standard_normal((64, d)).astype(np.float32)
    x = rng.standard_normal((10, d)).astype(np.float32)
    path = tmp_path / "sparse.index"
    ref = _write_rvc_index(path, x, 32, train=train)
    assert b"sprs" in path.read_bytes()
    index = FeatureIndex.load(path)
    assert index.to_faiss_bytes() == path.read_bytes()
    q = rng.standard_normal((50, d)).astype(np.float32)
    ref_dist, ref_ids = ref.search(q, 8)
    assert (ref_ids == -1).any()
    for mode in ("ivf", "faiss"):
        dist, ids = index.search(q, k=8, mode=mode)
        _assert_same_neighbours(ids, dist, ref_ids, ref_dist)
    rows = (ref_ids != -1).any(axis=1)  # a query whose list is empty gives NaN in RVC as in ours
    want = _rvc_blend(q, ref, ref.reconstruct_n(0, 10), 0.5, is_half=False)
    got = np.array(index.blend(q, 0.5, mode="ivf"))
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert rel_err(got[rows], want[rows]) <= 1e-5
    dist, ids = index.search(q, k=12)  # exact search with k > ntotal pads too
    assert (np.asarray(ids)[:, 10:] == -1).all() and (np.asarray(dist)[:, 10:] == FLT_MAX).all()


def test_arrays_round_trip(built):
    path, ref, queries = built
    index = FeatureIndex.load(path)
    arrays = index.to_arrays()
    assert set(arrays) == {"vectors", "centroids", "assign", "nprobe"}
    again = FeatureIndex.from_arrays(arrays)
    assert again.to_faiss_bytes() == path.read_bytes()
    ref_dist, ref_ids = ref.search(queries[:100], 8)
    for mode in ("ivf", "faiss"):  # faiss mode here runs on an index rebuilt from our bytes
        dist, ids = again.search(queries[:100], k=8, mode=mode)
        _assert_same_neighbours(ids, dist, ref_ids, ref_dist)
    flat = FeatureIndex.from_arrays({"vectors": arrays["vectors"]})  # e.g. RVC's older total_fea.npy
    np.testing.assert_array_equal(np.array(flat.search(queries, 8)[1]), np.array(index.search(queries, 8)[1]))
    with pytest.raises(CheckpointError, match="no IVF clustering"):
        flat.search(queries, 8, mode="ivf")
    bad = dict(arrays, assign=arrays["assign"] + 1000)
    with pytest.raises(CheckpointError, match="assign"):
        FeatureIndex.from_arrays(bad, path="voice.safetensors")
    with pytest.raises(CheckpointError, match="NaN"):
        FeatureIndex.from_arrays(dict(arrays, vectors=np.full_like(arrays["vectors"], np.nan)))


def test_bad_query_and_missing_faiss(built, monkeypatch):
    path, _, queries = built
    index = FeatureIndex.load(path)
    with pytest.raises(CheckpointError, match="-d vectors"):
        index.search(queries[:, :100], 8)
    with pytest.raises(ValueError):
        index.search(queries, 8, mode="hnsw")
    with pytest.raises(ValueError):
        index.blend(queries, 1.5)
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now fails
    with pytest.raises(ImportError, match="faiss-cpu"):
        index.search(queries, 8, mode="faiss")


def test_bad_files(tmp_path, rng):
    x = _clustered(rng, 300, 16, centres=4)
    good = tmp_path / "good.index"
    _write_rvc_index(good, x, 4)
    data = good.read_bytes()

    def check(name, content, match):
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(CheckpointError, match=match) as e:
            FeatureIndex.load(p)
        assert e.value.path == str(p)

    for cut in (2, 20, 60, 200, len(data) // 2, len(data) - 1):
        check(f"cut{cut}.index", data[:cut], "truncated")
    check("empty.index", b"", "empty")
    check("trailing.index", data + b"\0" * 8, "unexpected bytes")
    check("random.index", bytes(rng.integers(0, 256, 500, dtype=np.uint8)), "faiss index")
    check("model.index", b"PK\x03\x04" + data, "zip")
    check("ids.index", data[:-8] + data[-16:-8], "ids")  # the last id repeats the one before it
    flat = faiss.IndexFlatL2(16)
    flat.add(x)
    faiss.write_index(flat, str(tmp_path / "flat.index"))
    with pytest.raises(CheckpointError, match="'IxF2'.*IndexFlatL2"):
        FeatureIndex.load(tmp_path / "flat.index")
    ip = faiss.index_factory(16, "IVF4,Flat", faiss.METRIC_INNER_PRODUCT)
    ip.train(x)
    ip.add(x)
    faiss.write_index(ip, str(tmp_path / "ip.index"))
    with pytest.raises(CheckpointError, match="metric"):
        FeatureIndex.load(tmp_path / "ip.index")
    with pytest.raises(CheckpointError, match="no such"):
        FeatureIndex.load(tmp_path / "missing.index")
