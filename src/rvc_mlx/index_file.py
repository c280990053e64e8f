"""faiss's binary layout of RVC's index, read and written without faiss: IVF-Flat (``"IwFl"``) over a
flat L2 quantizer (``"IxF2"``), in-memory inverted lists (``"ilar"``).

This module owns that layout: the fourcc names, the header fields and their checks, the reader
(:func:`read_faiss_index`, used by :meth:`rvc_mlx.index.FeatureIndex.load`) and the writer
(:func:`faiss_bytes`, behind :meth:`rvc_mlx.index.FeatureIndex.to_faiss_bytes`). Search lives in
:mod:`rvc_mlx.index`.

:func:`read_faiss_index` parses the file directly (no faiss needed):

* ``"IwFl"`` (IndexIVFFlat), then the Index header: ``d`` (int32), ``ntotal`` (int64), two unused int64,
  ``is_trained`` (uint8), ``metric_type`` (int32; 1 = L2); then ``nlist``, ``nprobe`` (uint64);
* the coarse quantizer, a full index: ``"IxF2"`` (IndexFlatL2), its header, and the ``nlist`` centroids as a
  length-prefixed float32 vector;
* the direct map: type (uint8) and a length-prefixed int64 vector (plus id pairs for a hash table);
* the inverted lists, ``"ilar"``: ``nlist``, ``code_size`` (uint64), ``"full"`` + every list's size or
  ``"sprs"`` + (list, size) pairs of the non-empty lists; then per non-empty list its codes (float32
  vectors, ``code_size`` bytes each) followed by its int64 ids.

Anything else (other index or list types, inner-product metric, inconsistent sizes, a truncated file)
raises :class:`~rvc_mlx.errors.CheckpointError`.

:func:`faiss_bytes` writes the same layout (a plain ``IxF2`` quantizer, no direct map, ``"full"`` list
sizes when more than half the lists are used, ``"sprs"`` otherwise): what ``faiss.write_index`` writes for
RVC's index, byte for byte when the vectors were added in id order.
"""

from __future__ import annotations

import io
import os
import struct

import numpy as np

from rvc_mlx.errors import CheckpointError

METRIC_L2 = 1  # faiss::METRIC_L2
_INDEX_DUMMY = 1 << 20  # faiss writes this twice in every index header (former unused fields)

_KNOWN_FOURCC = {
    b"IxF2": "IndexFlatL2",
    b"IxFI": "IndexFlatIP",
    b"IxFl": "IndexFlat",
    b"IwPQ": "IndexIVFPQ",
    b"IwSq": "IndexIVFScalarQuantizer",
    b"IwSQ": "IndexIVFScalarQuantizer",
    b"IwFd": "IndexIVFFlatDedup",
    b"IvFl": "IndexIVFFlat (legacy layout)",
    b"IHNf": "IndexHNSWFlat",
    b"IxMp": "IndexIDMap",
    b"IxM2": "IndexIDMap2",
    b"IxPT": "IndexPreTransform",
    b"IxPQ": "IndexPQ",
}


class _Reader:
    """Sequential little-endian reads from a faiss file, failing cleanly on truncation."""

    def __init__(self, f, path: str):
        self.f = f
        self.path = path
        self.size = os.fstat(f.fileno()).st_size

    def remaining(self) -> int:
        return self.size - self.f.tell()

    def _need(self, nbytes: int, what: str) -> None:
        if nbytes > self.remaining():
            raise CheckpointError(self.path, f"truncated faiss index: {what} needs {nbytes} bytes at offset "
                                             f"{self.f.tell()}, only {self.remaining()} left")

    def bytes(self, n: int, what: str) -> bytes:
        self._need(n, what)
        return self.f.read(n)

    def unpack(self, fmt: str, what: str):
        return struct.unpack("<" + fmt, self.bytes(struct.calcsize("<" + fmt), what))

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        dt = np.dtype(dtype)
        self._need(count * dt.itemsize, what)
        return np.fromfile(self.f, dtype=dt, count=count)

    def vector(self, dtype: str, what: str) -> np.ndarray:
        (count,) = self.unpack("Q", what + " length")
        return self.array(dtype, count, what)


def _fourcc_problem(h: bytes, expected: str) -> str:
    if h[:2] == b"PK":
        return "this is a zip archive (a PyTorch .pth?), not a faiss index"
    if h == b"\x93NUM":
        return "this is a NumPy .npy file, not a faiss index"
    name = _KNOWN_FOURCC.get(h)
    if name is not None:
        return f"unsupported faiss index type {h.decode()!r} ({name}); only {expected} is read"
    if all(32 <= c < 127 for c in h):
        return f"unsupported faiss index type {h.decode()!r}; only {expected} is read"
    return f"not a faiss index (starts with {h!r}); only {expected} is read"


def _read_header(r: _Reader, what: str) -> tuple[int, int, int]:
    """Index header -> (d, ntotal, metric_type)."""
    d, ntotal, dummy1, dummy2, is_trained, metric = r.unpack("iqqqBi", what + " header")
    if d <= 0 or ntotal < 0:
        raise CheckpointError(r.path, f"{what}: bad dimensions d={d}, ntotal={ntotal}")
    if dummy1 != _INDEX_DUMMY or dummy2 != _INDEX_DUMMY or is_trained > 1:
        raise CheckpointError(r.path, f"{what}: corrupt header")
    if metric != METRIC_L2:
        raise CheckpointError(r.path, f"{what}: metric type {metric} is not supported (only L2 = 1)")
    if not is_trained:
        raise CheckpointError(r.path, f"{what}: index was never trained")
    return d, ntotal, metric


def read_faiss_index(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Parse an RVC faiss IVF-Flat ``.index`` file.

    Returns ``vectors`` (ntotal, d) float32 in id order (= ``reconstruct_n(0, ntotal)``), ``centroids``
    (nlist, d) float32, ``assign`` (ntotal,) int32 (inverted list of each vector) and ``nprobe`` (1,) int64.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(path, "no such index file")
    with open(path, "rb") as f:
        r = _Reader(f, path)
        h = r.bytes(4, "index type") if r.size >= 4 else b""
        if len(h) < 4:
            raise CheckpointError(path, "empty or truncated faiss index")
        if h != b"IwFl":
            raise CheckpointError(path, _fourcc_problem(h, "IVF-Flat ('IwFl')"))
        d, ntotal, _ = _read_header(r, "IVF index")
        nlist, nprobe = r.unpack("QQ", "IVF nlist/nprobe")
        if nlist == 0 or nprobe == 0:
            raise CheckpointError(path, f"bad IVF parameters nlist={nlist}, nprobe={nprobe}")
        qh = r.bytes(4, "quantizer type")
        if qh not in (b"IxF2", b"IxFl"):
            raise CheckpointError(path, "quantizer: " + _fourcc_problem(qh, "a flat L2 quantizer ('IxF2')"))
        qd, qn, _ = _read_header(r, "quantizer")
        centroids = r.vector("<f4", "centroids")
        if qd != d or qn != nlist or centroids.size != nlist * d:
            raise CheckpointError(path, f"quantizer holds {qn} centroids of dim {qd} ({centroids.size} "
                                        f"values) but the IVF index has nlist={nlist}, d={d}")
        (map_type,) = r.unpack("B", "direct map type")
        if map_type > 2:
            raise CheckpointError(path, f"unknown direct map type {map_type}")
        r.vector("<i8", "direct map")
        if map_type == 2:
            r.vector("V16", "direct map hash table")  # (id, offset) int64 pairs
        lh = r.bytes(4, "inverted lists type")
        if lh != b"ilar":
            raise CheckpointError(path, f"unsupported inverted lists {lh!r}: only in-memory 'ilar' lists "
                                        "are read")
        il_nlist, code_size = r.unpack("QQ", "inverted lists header")
        if il_nlist != nlist or code_size != 4 * d:
            raise CheckpointError(path, f"inverted lists have nlist={il_nlist}, code_size={code_size}; "
                                        f"expected {nlist} and {4 * d}")
        layout = r.bytes(4, "inverted lists layout")
        sizes = np.zeros(nlist, dtype=np.int64)
        if layout == b"full":
            raw = r.vector("<u8", "list sizes")
            if raw.size != nlist:
                raise CheckpointError(path, f"{raw.size} list sizes for {nlist} lists")
            sizes[:] = raw
        elif layout == b"sprs":
            raw = r.vector("<u8", "sparse list sizes")
            if raw.size % 2 or (raw[0::2] >= nlist).any():
                raise CheckpointError(path, "corrupt sparse inverted list sizes")
            sizes[raw[0::2].astype(np.int64)] = raw[1::2]
        else:
            raise CheckpointError(path, f"unknown inverted lists layout {layout!r}")
        if sizes.sum() != ntotal:
            raise CheckpointError(path, f"inverted lists hold {int(sizes.sum())} vectors, the header says "
                                        f"{ntotal}")
        vectors = np.empty((ntotal, d), dtype=np.float32)
        assign = np.full(ntotal, -1, dtype=np.int32)
        for list_no in np.flatnonzero(sizes):  # loop over clusters, not vectors
            n = int(sizes[list_no])
            codes = r.array("<f4", n * d, f"codes of list {list_no}").reshape(n, d)  # (n, d)
            ids = r.array("<i8", n, f"ids of list {list_no}")
            if ids.min() < 0 or ids.max() >= ntotal or (assign[ids] >= 0).any():
                raise CheckpointError(path, f"list {list_no}: ids are not a permutation of 0..ntotal-1")
            assign[ids] = list_no
            vectors[ids] = codes
        if (assign < 0).any():
            raise CheckpointError(path, "inverted lists repeat some ids and miss others")
        if r.remaining():
            raise CheckpointError(path, f"{r.remaining()} unexpected bytes after the inverted lists")
    return {"vectors": vectors, "centroids": centroids.reshape(nlist, d), "assign": assign,
            "nprobe": np.array([nprobe], dtype=np.int64)}


def _index_header(d: int, ntotal: int) -> bytes:
    """A trained L2 index's header (the inverse of :func:`_read_header`)."""
    return struct.pack("<iqqqBi", d, ntotal, _INDEX_DUMMY, _INDEX_DUMMY, 1, METRIC_L2)


def faiss_bytes(vectors: np.ndarray, centroids: np.ndarray, assign: np.ndarray, nprobe: int) -> bytes:
    """An IVF-Flat index in faiss's file layout: ``vectors`` (ntotal, d) in id order, ``centroids``
    (nlist, d), ``assign`` (ntotal,) the inverted list of every vector, ``nprobe`` as stored (RVC: 1).
    The inverse of :func:`read_faiss_index`."""
    vectors, centroids, assign = np.asarray(vectors), np.asarray(centroids), np.asarray(assign)
    (ntotal, d), nlist = vectors.shape, centroids.shape[0]
    buf = io.BytesIO()
    buf.write(b"IwFl" + _index_header(d, ntotal) + struct.pack("<QQ", nlist, nprobe))
    buf.write(b"IxF2" + _index_header(d, nlist) + struct.pack("<Q", nlist * d)
              + centroids.astype("<f4").tobytes())
    buf.write(struct.pack("<BQ", 0, 0))  # no direct map
    buf.write(b"ilar" + struct.pack("<QQ", nlist, 4 * d))
    sizes = np.bincount(assign, minlength=nlist)
    nonempty = np.flatnonzero(sizes)
    if len(nonempty) > nlist // 2:
        buf.write(b"full" + struct.pack("<Q", nlist) + sizes.astype("<u8").tobytes())
    else:
        pairs = np.stack([nonempty, sizes[nonempty]], axis=1).astype("<u8")  # (m, 2): list, size
        buf.write(b"sprs" + struct.pack("<Q", pairs.size) + pairs.tobytes())
    order = np.argsort(assign, kind="stable")  # ids grouped by list, ascending within a list
    starts = np.concatenate([[0], np.cumsum(sizes)])
    for list_no in nonempty:  # loop over clusters, not vectors
        ids = order[starts[list_no]:starts[list_no + 1]]
        buf.write(vectors[ids].astype("<f4").tobytes())
        buf.write(ids.astype("<i8").tobytes())
    return buf.getvalue()
