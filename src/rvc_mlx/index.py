"""Feature retrieval: RVC's faiss ``.index`` files read without faiss, k-NN search and blending in MLX.

RVC trains ``faiss.index_factory(dim, "IVF<n>,Flat")`` on the HuBERT features of the training set
(``dim`` = 256 for v1 models, 768 for v2), sets ``nprobe = 1`` and writes it with ``faiss.write_index``
(``added_IVF<n>_Flat_nprobe_1_<name>_<ver>.index``). At inference it reconstructs every stored vector
(``big_npy = index.reconstruct_n(0, ntotal)``, i.e. in id order), looks up the 8 nearest stored vectors of
each feature frame and mixes their inverse-squared-distance weighted mean into the features
(:meth:`FeatureIndex.blend`).

The ``.index`` file itself (faiss's binary layout, read and written without faiss) is
:mod:`rvc_mlx.index_file`'s: :func:`read_faiss_index` (re-exported here) and
:meth:`FeatureIndex.to_faiss_bytes` come from there.

Search modes of :meth:`FeatureIndex.search` (all return squared L2 distances and ids, ascending):

* ``"exact"`` (default): the true k nearest neighbours over all stored vectors. A first pass scores
  ``(||q||² − 2 q·x) + ||x||²`` (one GEMM per block of queries); its best ``k + 8`` candidates are
  re-scored as faiss's IVF-Flat scan scores vectors, a float32 sum of squared differences in its lane
  order (:func:`_sum_squares`), so the cancellation of the expansion never decides the order.
* ``"ivf"``: faiss's IVF search reproduced in MLX. With ``nprobe = 1`` (what RVC stores) faiss only looks in
  the one inverted list whose centroid is nearest the query, so its neighbours can differ from the exact
  ones (a true neighbour just across a cluster border is never seen), and when that list holds fewer than
  ``k`` vectors the missing slots are ids ``-1`` at distance ``FLT_MAX`` (weight 0 in the blend). This mode
  does the same work: nearest ``nprobe`` centroids, then only the vectors of their lists, laid out at load
  as chunks of centroid residuals and scored with one ``gather_mm`` per block of queries
  (:meth:`FeatureIndex._ivf_block`), the best ``k + 2`` re-scored like ``"exact"``. It gives the ids faiss
  gives, ties included (equal distances: lowest id first, as faiss's heaps), except where distances
  differ by about one float32 rounding; it is what to use to match RVC's output.
* ``"faiss"``: the optional ``faiss-cpu`` package itself (imported only here), on an index rebuilt from
  the parsed arrays (:meth:`FeatureIndex.to_faiss_bytes`).
"""

from __future__ import annotations

import os

import mlx.core as mx  # the package __init__ (fast BLAS) has run before any submodule import
import numpy as np

from rvc_mlx.errors import CheckpointError
from rvc_mlx.index_file import METRIC_L2 as METRIC_L2  # re-exported: faiss::METRIC_L2
from rvc_mlx.index_file import faiss_bytes, read_faiss_index

SEARCH_MODES = ("exact", "ivf", "faiss")
FLT_MAX = float(np.finfo(np.float32).max)  # faiss's distance for a missing neighbour (id -1)
_EXACT_MARGIN = 8  # extra candidates re-scored in exact mode, beyond k (||q||² + ||x||² − 2 q·x cancels)
_IVF_MARGIN = 2  # extra candidates re-scored in ivf mode (residuals to the centroid cancel far less)
_LANES = 16  # float32 lanes of faiss's AVX-512 distance loop
_CHUNK_WIDTH = 64  # slots per chunk of an inverted list
_CPU_TILE = 8  # query rows per matrix product on the CPU (rows of one list, grouped)
_BLOCK_ELEMENTS = 1 << 24  # largest intermediate per block of queries, in elements (64 MiB of float32)


def _validate(arrays: dict, path: str | None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, int]:
    """Check the arrays of an index; return (vectors, centroids, assign, nprobe) as float32/int32/int."""
    vectors = np.asarray(arrays["vectors"])
    if vectors.ndim != 2 or vectors.shape[0] < 1 or vectors.shape[1] < 1 or vectors.dtype.kind != "f":
        raise CheckpointError(path, f"index vectors must be a non-empty (ntotal, dim) float array, "
                                    f"got {vectors.dtype} {vectors.shape}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if not np.isfinite(vectors).all():
        raise CheckpointError(path, "index vectors contain NaN or infinity")
    has_c, has_a = "centroids" in arrays, "assign" in arrays
    if has_c != has_a:
        raise CheckpointError(path, "index arrays need both 'centroids' and 'assign' or neither")
    centroids = assign = None
    if has_c:
        centroids = np.ascontiguousarray(arrays["centroids"], dtype=np.float32)
        assign = np.asarray(arrays["assign"])
        if centroids.ndim != 2 or centroids.shape[0] < 1 or centroids.shape[1] != vectors.shape[1]:
            raise CheckpointError(path, f"centroids {centroids.shape} do not match vectors {vectors.shape}")
        if not np.isfinite(centroids).all():
            raise CheckpointError(path, "index centroids contain NaN or infinity")
        if assign.shape != (vectors.shape[0],) or assign.dtype.kind not in "iu":
            raise CheckpointError(path, f"assign must be ({vectors.shape[0]},) integers, got "
                                        f"{assign.dtype} {assign.shape}")
        if assign.min() < 0 or assign.max() >= centroids.shape[0]:
            raise CheckpointError(path, f"assign holds list numbers outside 0..{centroids.shape[0] - 1}")
        assign = assign.astype(np.int32)
    nprobe = int(np.asarray(arrays.get("nprobe", 1)).reshape(-1)[0])
    if nprobe < 1:
        raise CheckpointError(path, f"nprobe must be >= 1, got {nprobe}")
    return vectors, centroids, assign, nprobe


def _sum_squares(diff: mx.array) -> mx.array:
    """(..., dim) -> (...): the sum of squares in faiss's ``fvec_L2sqr`` order on AVX-512, 16 lanes each
    summed along the vector then the lanes added pairwise (8 + 8, 4 + 4, ...): as accurate as faiss
    (relative error ~1e-7 at dim 768, where a plain float32 sum reaches ~2e-6) and mostly bit-identical."""
    sq = diff * diff
    if sq.shape[-1] % _LANES:
        return mx.sum(sq, axis=-1)
    lanes = mx.sum(sq.reshape(*sq.shape[:-1], -1, _LANES), axis=-2)  # (..., 16)
    while lanes.shape[-1] > 1:
        half = lanes.shape[-1] // 2
        lanes = lanes[..., :half] + lanes[..., half:]
    return lanes[..., 0]


def _order_key(dist: mx.array, ids: mx.array) -> mx.array:
    """float32 distances and int32 ids (same shape) -> int64 keys ordered by (distance, id): faiss's heaps
    break exact ties by id. Distances are clamped at 0 (the expansion can round below), so their float32
    bit patterns order like them (+inf included)."""
    bits = mx.view(mx.maximum(dist, 0.0), mx.int32).astype(mx.int64)
    return bits * (1 << 32) + ids.astype(mx.int64)


class FeatureIndex:
    """Stored feature vectors (ntotal, dim), optionally with their IVF clustering, searchable in MLX.

    ``vectors`` (ntotal, dim) are in id order, ``centroids`` (nlist, dim) are the IVF cluster centres and
    ``assign`` (ntotal,) the cluster (inverted list) of every vector; ``nprobe`` is how many clusters faiss
    visits per query. Squared norms are computed once here, not per search.
    """

    def __init__(self, vectors, centroids=None, assign=None, nprobe: int = 1, path=None):
        arrays = {"vectors": vectors, "nprobe": nprobe}
        if centroids is not None or assign is not None:
            arrays.update(centroids=centroids, assign=assign)
        self.path = None if path is None else os.fspath(path)
        vectors, centroids, assign, self.nprobe = _validate(arrays, self.path)
        self.ntotal, self.dim = vectors.shape
        self.vectors = mx.array(vectors)  # (ntotal, dim)
        self.sq_norms = mx.sum(self.vectors * self.vectors, axis=1)  # (ntotal,)
        self.centroids = self.centroid_sq_norms = self.assign = None
        if centroids is not None:
            self.centroids = mx.array(centroids)  # (nlist, dim)
            self.centroid_sq_norms = mx.sum(self.centroids * self.centroids, axis=1)  # (nlist,)
            self.assign = mx.array(assign)  # (ntotal,) int32
            self._build_chunks(vectors, centroids, assign)
        mx.eval(self.vectors, self.sq_norms)
        self._faiss = None
        self.pairs_on_host = None  # ivf pairs built from the probed lists read back: None = on the CPU only

    def _build_chunks(self, vectors: np.ndarray, centroids: np.ndarray, assign: np.ndarray) -> None:
        """Lay the inverted lists out for search, once: each list cut into chunks of ``chunk_width`` slots.

        ``chunk_residuals_t`` (chunks + 1, dim, width): every vector minus its list's centroid, transposed
        so that one chunk is the right-hand matrix of a (1, dim) x (dim, width) product; a list's vectors
        fill its chunks in id order (faiss's scan order for lists added in id order), the last slots of a
        list's last chunk and the extra final chunk are padding. ``chunk_sq_norms`` (chunks + 1, width):
        squared norms of those residuals, +inf on padding. ``chunk_ids`` (chunks + 1, width) int32: the ids,
        -1 on padding. ``list_first_chunk``/``list_chunks`` (nlist,) int32: where each list starts and how
        many chunks it has; ``max_chunks``: the most any list has.
        """
        nlist = centroids.shape[0]
        sizes = np.bincount(assign, minlength=nlist)
        width = int(min(_CHUNK_WIDTH, -(-int(sizes.max()) // 8) * 8))
        n_chunks = -(-sizes // width)  # (nlist,)
        first = np.concatenate([[0], np.cumsum(n_chunks)[:-1]])
        total = int(n_chunks.sum())
        order = np.argsort(assign, kind="stable")  # ids grouped by list, ascending within each list
        lists = assign[order]
        rank = np.arange(len(order)) - np.concatenate([[0], np.cumsum(sizes)[:-1]])[lists]  # place in list
        chunk, slot = first[lists] + rank // width, rank % width
        res = vectors[order] - centroids[lists]  # (ntotal, dim) in list order
        residuals = np.zeros((total + 1, vectors.shape[1], width), dtype=np.float32)  # (chunks + 1, dim, W)
        residuals.transpose(0, 2, 1)[chunk, slot] = res
        norms = np.full((total + 1, width), np.inf, dtype=np.float32)
        norms[chunk, slot] = np.einsum("nd,nd->n", res, res)
        ids = np.full((total + 1, width), -1, dtype=np.int32)
        ids[chunk, slot] = order
        self.chunk_width, self.max_chunks, self.empty_chunk = width, int(n_chunks.max()), total
        self.chunk_residuals_t = mx.array(residuals)  # (C+1, dim, W)
        self.chunk_sq_norms = mx.array(norms)  # (C+1, W)
        self.chunk_ids = mx.array(ids)  # (C+1, W)
        self._list_first_chunk_np, self._list_chunks_np = first.astype(np.int32), n_chunks.astype(np.int32)
        self.list_first_chunk = mx.array(self._list_first_chunk_np)  # (nlist,)
        self.list_chunks = mx.array(self._list_chunks_np)  # (nlist,)
        mx.eval(self.chunk_residuals_t, self.chunk_sq_norms, self.chunk_ids, self.centroids,
                self.centroid_sq_norms)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureIndex:
        """Read an RVC faiss ``.index`` file (no faiss needed)."""
        return cls.from_arrays(read_faiss_index(path), path=path)

    @classmethod
    def from_arrays(cls, arrays: dict, path=None) -> FeatureIndex:
        """Inverse of :meth:`to_arrays`. ``centroids``/``assign``/``nprobe`` are optional (without them only
        exact search works)."""
        if "vectors" not in arrays:
            raise CheckpointError(path, "index arrays have no 'vectors'")
        return cls(arrays["vectors"], arrays.get("centroids"), arrays.get("assign"), arrays.get("nprobe", 1),
                   path=path)

    @property
    def nlist(self) -> int:
        """Number of IVF clusters (0 when the index has no clustering)."""
        return 0 if self.centroids is None else self.centroids.shape[0]

    def to_arrays(self) -> dict[str, np.ndarray]:
        """``vectors`` (ntotal, dim) f32, and if clustered ``centroids`` (nlist, dim) f32, ``assign``
        (ntotal,) int32, ``nprobe`` (1,) int64: everything needed to rebuild this index."""
        out = {"vectors": np.array(self.vectors), "nprobe": np.array([self.nprobe], dtype=np.int64)}
        if self.centroids is not None:
            out["centroids"] = np.array(self.centroids)
            out["assign"] = np.array(self.assign)
        return out

    def to_faiss_bytes(self) -> bytes:
        """This index in faiss's IVF-Flat file layout (:func:`rvc_mlx.index_file.faiss_bytes`): what
        ``faiss.write_index`` writes for RVC's index."""
        if self.centroids is None:
            raise CheckpointError(self.path, "this index has no IVF clustering to write as a faiss index")
        return faiss_bytes(np.array(self.vectors), np.array(self.centroids), np.array(self.assign),
                           self.nprobe)

    # ------------------------------------------------------------------ search

    def _query(self, query) -> mx.array:
        q = query if isinstance(query, mx.array) else mx.array(np.asarray(query))
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise CheckpointError(self.path, f"index holds {self.dim}-d vectors but the query is "
                                             f"{tuple(q.shape)} (v1 models use 256-d features, v2 768-d)")
        return q.astype(mx.float32)

    def search(self, query, k: int = 8, mode: str = "exact") -> tuple[mx.array, mx.array]:
        """k nearest stored vectors of each query row.

        query (N, dim) -> (distances (N, k) float32 squared L2, ascending; ids (N, k) int32). Missing
        neighbours (fewer than k candidates) are id -1 at distance FLT_MAX, as in faiss. ``mode``: see the
        module docstring. The result is lazy (not evaluated): nothing here waits for the device.
        """
        if mode not in SEARCH_MODES:
            raise ValueError(f"mode must be one of {SEARCH_MODES}, got {mode!r}")
        k = int(k)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = self._query(query)
        if mode == "faiss":
            return self._search_faiss(q, k)
        if mode == "ivf" and self.centroids is None:
            raise CheckpointError(self.path, "this index has no IVF clustering; use mode='exact'")
        if mode == "ivf":
            nprobe = min(self.nprobe, self.nlist)
            width = max(nprobe * self.max_chunks * self.chunk_width, self.nlist, (k + _IVF_MARGIN) * self.dim)
            block = self._ivf_block
        else:
            width = max(self.ntotal, (k + _EXACT_MARGIN) * self.dim)
            block = self._exact_block
        rows = max(1, _BLOCK_ELEMENTS // width)
        dists, ids = [], []
        for start in range(0, q.shape[0], rows):  # blocks of queries bound the memory of each pass
            d, i = block(q[start:start + rows], k)
            mx.async_eval(d, i)  # queued, not waited for: the next block's graph is built meanwhile
            dists.append(d)
            ids.append(i)
        if not dists:
            return mx.zeros((0, k), dtype=mx.float32), mx.zeros((0, k), dtype=mx.int32)
        if len(dists) == 1:
            return dists[0], ids[0]
        return mx.concatenate(dists, axis=0), mx.concatenate(ids, axis=0)

    def _probed_lists(self, q: mx.array) -> mx.array:
        """q (n, dim) -> (n, nprobe) the lists faiss visits: those of the nearest centroids, nearest first.

        Scored as faiss's BLAS path does: ``||c||² − 2 q·c`` for the single nearest (the per-query
        ``||q||²`` cannot change an argmin), ``(||q||² + ||c||²) − 2 q·c`` when ranking several.
        """
        ip = q @ self.centroids.T  # (n, nlist)
        nprobe = min(self.nprobe, self.nlist)
        if nprobe == 1:
            return mx.argmin(self.centroid_sq_norms - 2 * ip, axis=1, keepdims=True)  # (n, 1)
        cd = (mx.sum(q * q, axis=1, keepdims=True) + self.centroid_sq_norms) - 2 * ip  # (n, nlist)
        near = mx.argpartition(cd, kth=nprobe - 1, axis=1)[:, :nprobe]  # (n, nprobe)
        return mx.take_along_axis(near, mx.argsort(mx.take_along_axis(cd, near, axis=1), axis=1), axis=1)

    def _ivf_block(self, q: mx.array, k: int) -> tuple[mx.array, mx.array]:
        """IVF search of q (n, dim): the probed lists' chunks scored in one gathered matmul.

        Per (query, probe) "row": the query's residual ``r = q − c`` to that list's centroid; per stored
        vector its residual ``x − c`` (prepared at load), so
        ``||q − x||² = ||r||² + ||x − c||² − 2 r·(x − c)``, terms far smaller than ``||q||²`` and
        ``||x||²``. ``gather_mm`` multiplies tiles of rows (B, dim) by chunks (dim, W); each (row, chunk)
        keeps its best ``k + margin`` slots at ``row * max_chunks + step`` of a table
        (rows * max_chunks, k + margin), +inf where no chunk; the best of each query's table row go to
        :meth:`_refine`.

        On a GPU a tile is one row (B = 1) and meets ``max_chunks`` chunks, those past its list's end
        being the all-padding chunk (scored, +inf): every shape follows from the index and the block size,
        nothing waits for the device. On the CPU, where reading the probed lists back costs no transfer,
        rows are grouped by list into tiles of ``_CPU_TILE`` (GEMMs instead of matrix-vector products)
        and a tile meets only the chunks its list has (skewed lists: the biggest no longer sets every
        query's cost), ordered by chunk so that a chunk stays in cache.
        """
        n, nprobe, s = q.shape[0], min(self.nprobe, self.nlist), self.max_chunks
        rows = n * nprobe
        lists = self._probed_lists(q)  # (n, P)
        r = (q[:, None, :] - self.centroids[lists]).reshape(rows, self.dim)  # (rows, dim)
        r_sq = mx.sum(r * r, axis=-1)  # (rows,)
        host = self.pairs_on_host if self.pairs_on_host is not None else mx.default_device() == mx.cpu
        if host:
            tile_rows, pair_tile, pair_chunk, pair_slot = self._cpu_tiles(np.array(lists).reshape(-1))
            if pair_tile.size == 0:  # every query probes empty lists only
                return self._refine(q, mx.full((n, 1), -1, dtype=mx.int32), k)
            r = mx.concatenate([r, mx.zeros((1, self.dim), dtype=r.dtype)])[tile_rows]  # (G B, dim)
            r_sq = mx.concatenate([r_sq, mx.zeros((1,), dtype=r_sq.dtype)])[tile_rows]  # (G B,)
            tile = _CPU_TILE
        else:
            step = mx.arange(s, dtype=mx.int32)  # (S,)
            pair_chunk = self.list_first_chunk[lists].reshape(rows, 1) + step  # (rows, S)
            pair_chunk = mx.where(step < self.list_chunks[lists].reshape(rows, 1), pair_chunk,
                                  self.empty_chunk).reshape(-1)  # (rows S,)
            pair_tile = mx.repeat(mx.arange(rows, dtype=mx.int32), s)  # (rows S,)
            pair_slot, tile = None, 1  # pairs already in table order
        ip = mx.gather_mm(r.reshape(-1, tile, self.dim), self.chunk_residuals_t,
                          lhs_indices=pair_tile, rhs_indices=pair_chunk)  # (pairs, B, W)
        r_sq = r_sq.reshape(-1, tile)[pair_tile]  # (pairs, B)
        d2 = (r_sq[..., None] + self.chunk_sq_norms[pair_chunk][:, None, :]) - 2 * ip  # (pairs, B, W)
        d2 = d2.reshape(-1, self.chunk_width)  # (pairs B, W)
        ids = mx.broadcast_to(self.chunk_ids[pair_chunk][:, None, :], ip.shape).reshape(d2.shape)
        c = min(k + _IVF_MARGIN, self.chunk_width)
        if c < self.chunk_width:  # (distance, id) keys: exact ties keep the lowest ids, as faiss does
            best = mx.argpartition(_order_key(d2, ids), kth=c - 1, axis=1)[:, :c]  # (pairs B, c)
            d2, ids = mx.take_along_axis(d2, best, axis=1), mx.take_along_axis(ids, best, axis=1)
        if pair_slot is not None:  # scatter into the table; padding lanes land in its extra last row
            table_d = mx.full((rows * s + 1, c), mx.inf, dtype=mx.float32)
            table_d[pair_slot] = d2
            table_i = mx.full((rows * s + 1, c), -1, dtype=mx.int32)
            table_i[pair_slot] = ids
            d2, ids = table_d[:-1], table_i[:-1]
        d2, ids = d2.reshape(n, nprobe * s * c), ids.reshape(n, nprobe * s * c)  # (n, P S c)
        c = min(k + _IVF_MARGIN, d2.shape[1])
        cand = mx.argpartition(_order_key(d2, ids), kth=c - 1, axis=1)[:, :c]  # (n, c)
        return self._refine(q, mx.take_along_axis(ids, cand, axis=1), k)

    def _cpu_tiles(self, lists: np.ndarray) -> tuple[mx.array, mx.array, mx.array, mx.array]:
        """lists (rows,): the probed list of each (query, probe) row -> the CPU work plan.

        Rows are grouped by list into tiles of B = ``_CPU_TILE`` (a list's last tile padded with row
        ``rows``, a zero row). Returns ``tile_rows`` (G B,) int32, the row in each tile lane;
        ``pair_tile``/``pair_chunk`` (pairs,) int32, every (tile, chunk of the tile's list), sorted by chunk;
        ``pair_slot`` (pairs B,) int32, the table row of each (pair, lane): ``row * max_chunks + step``, or
        the table's extra last row for padding lanes.
        """
        n_rows, b = len(lists), _CPU_TILE
        order = np.argsort(lists, kind="stable")  # rows grouped by list
        group_list, group_start, group_rows = np.unique(lists[order], return_index=True, return_counts=True)
        group_tiles = -(-group_rows // b)
        group_first_tile = np.cumsum(group_tiles) - group_tiles
        group = np.repeat(np.arange(len(group_list)), group_rows)  # (rows,) group of each sorted row
        lane_pos = group_first_tile[group] * b + np.arange(n_rows) - group_start[group]
        tile_rows = np.full(int(group_tiles.sum()) * b, n_rows, dtype=np.int32)  # (G B,)
        tile_rows[lane_pos] = order
        group_chunks = self._list_chunks_np[group_list]
        per_group = group_tiles * group_chunks  # pairs of each group: its tiles x its list's chunks
        pg = np.repeat(np.arange(len(group_list)), per_group)  # (pairs,)
        within = np.arange(len(pg)) - np.repeat(np.cumsum(per_group) - per_group, per_group)
        step, tile = within // group_tiles[pg], group_first_tile[pg] + within % group_tiles[pg]
        chunk = self._list_first_chunk_np[group_list][pg] + step  # chunk-major within a group
        lane_row = tile_rows.reshape(-1, b)[tile]  # (pairs, B)
        slot = np.where(lane_row < n_rows, lane_row.astype(np.int64) * self.max_chunks + step[:, None],
                        n_rows * self.max_chunks)  # (pairs, B)
        return (mx.array(tile_rows), mx.array(tile.astype(np.int32)), mx.array(chunk.astype(np.int32)),
                mx.array(slot.reshape(-1).astype(np.int32)))

    def _exact_block(self, q: mx.array, k: int) -> tuple[mx.array, mx.array]:
        """Exact search of q (n, dim): ``(||q||² − 2 q·x) + ||x||²`` against every stored vector (one GEMM),
        the best ``k + 8`` candidates re-scored by :meth:`_refine`."""
        d2 = (mx.sum(q * q, axis=1, keepdims=True) - 2 * (q @ self.vectors.T)) + self.sq_norms  # (n, ntotal)
        c = min(k + _EXACT_MARGIN, self.ntotal)
        cand = mx.argpartition(d2, kth=c - 1, axis=1)[:, :c].astype(mx.int32)  # (n, c)
        return self._refine(q, cand, k)

    def _refine(self, q: mx.array, cand: mx.array, k: int) -> tuple[mx.array, mx.array]:
        """Re-score candidate ids (n, c) (-1: none) of q (n, dim) as faiss's IVF-Flat scan does, the sum of
        float32 squared differences, and keep the k best ordered by (distance, id): faiss's tie order, its
        heaps break equal distances by id. -> (distances (n, k), ids (n, k)), FLT_MAX / -1 where missing."""
        diff = mx.take(self.vectors, mx.maximum(cand, 0), axis=0) - q[:, None, :]  # (n, c, dim)
        dist = mx.where(cand >= 0, _sum_squares(diff), mx.inf)  # (n, c)
        order = mx.argsort(_order_key(dist, cand), axis=1)[:, :k]
        dist = mx.take_along_axis(dist, order, axis=1)
        ids = mx.take_along_axis(cand, order, axis=1)
        missing = dist == mx.inf
        ids = mx.where(missing, -1, ids)
        dist = mx.where(missing, FLT_MAX, dist)
        if ids.shape[1] < k:  # fewer candidates than k
            pad = k - ids.shape[1]
            dist = mx.concatenate([dist, mx.full((dist.shape[0], pad), FLT_MAX, dtype=mx.float32)], axis=1)
            ids = mx.concatenate([ids, mx.full((ids.shape[0], pad), -1, dtype=mx.int32)], axis=1)
        return dist, ids

    def _search_faiss(self, q: mx.array, k: int) -> tuple[mx.array, mx.array]:
        if self._faiss is None:
            if self.centroids is None:
                raise CheckpointError(self.path, "this index has no IVF clustering; use mode='exact'")
            try:
                import faiss
            except ImportError as e:
                raise ImportError("search mode 'faiss' needs the optional faiss-cpu package "
                                  "(pip install 'rvc-mlx[faiss]'); mode 'ivf' gives the same neighbours "
                                  "without it") from e
            self._faiss = faiss.deserialize_index(np.frombuffer(self.to_faiss_bytes(), dtype=np.uint8))
        dist, ids = self._faiss.search(np.ascontiguousarray(np.array(q), dtype=np.float32), k)
        return mx.array(dist), mx.array(ids.astype(np.int32))

    # ------------------------------------------------------------------ blend

    def blend(self, features, index_rate: float, k: int = 8, mode: str = "exact") -> mx.array:
        """RVC's retrieval blend (``Pipeline.vc`` in rvc/modules/vc/pipeline.py).

        features (T, dim) -> (T, dim) of the same dtype. Each frame's k neighbours are averaged with weights
        ``1/distance²`` (normalised per frame) and mixed in: ``mean * index_rate + (1 - index_rate) *
        features``. Search and averaging run in float32; as in RVC's half mode, float16 features get the
        float32 mean cast to float16 before mixing. ``index_rate == 0`` returns the features unchanged.
        A query equal to a stored vector (distance 0) gives NaN, exactly like RVC.
        """
        index_rate = float(index_rate)
        if not 0.0 <= index_rate <= 1.0:
            raise ValueError(f"index_rate must be in [0, 1], got {index_rate}")
        feats = features if isinstance(features, mx.array) else mx.array(np.asarray(features))
        if index_rate == 0:
            return feats
        score, ix = self.search(feats.astype(mx.float32), k=k, mode=mode)  # (T, k) each
        weight = mx.square(1 / score)
        weight = weight / mx.sum(weight, axis=1, keepdims=True)
        npy = mx.sum(mx.take(self.vectors, ix, axis=0) * weight[..., None], axis=1)  # (T, dim); id -1 wraps
        npy = npy.astype(feats.dtype)
        return npy * index_rate + (1 - index_rate) * feats


def load_index(path: str | os.PathLike) -> FeatureIndex:
    """Read an RVC faiss ``.index`` file into a :class:`FeatureIndex`."""
    return FeatureIndex.load(path)
