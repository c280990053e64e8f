"""Index search timing: faiss against rvc-mlx's ``ivf`` and ``exact`` modes on the same IVF512 index.

For each ``--vectors`` size it builds a synthetic 768-d index of RVC's kind (``IVF512,Flat``, nprobe 1)
whose clusters are unevenly filled (vectors drawn from 3000 Gaussian centres with Zipf-like weights, so a
few inverted lists are much longer than the rest, as with real voices), then times a k = 8 search of
``seconds * 50`` query frames (HuBERT's 50 frames per second), drawn from the same mixture, by each
implementation: best of ``--repeats``, the implementations alternating within each repeat. The ``ivf``
column also counts the query rows whose ids differ from faiss's (it should be 0: ``ivf`` reproduces faiss's
nprobe-1 search; ``exact`` finds the true neighbours, so it differs wherever faiss misses one).

    python benchmarks/bench_index.py --vectors 20000 200000 --seconds 5 30 300 --repeats 3

With faiss-cpu installed (``pip install 'rvc-mlx[faiss]'``) the index is trained and written by faiss, as
RVC does, and read back by rvc-mlx from that file. Without it the clustering is a few k-means steps in
numpy, written in faiss's layout by rvc-mlx, and the faiss column is left out.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

import rvc_mlx  # noqa: F401  (BLAS before MLX on Linux CPU)

import mlx.core as mx  # isort: skip
from rvc_mlx.index import FeatureIndex  # noqa: E402

DIM, NLIST, K, FRAMES_PER_SECOND = 768, 512, 8, 50
MIXTURE_CENTRES = 3000


def mixture(n: int, centres: np.ndarray, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """n vectors (n, dim) float32 around randomly chosen centres, picked with the given weights."""
    comp = rng.choice(len(centres), n, p=weights)
    return (centres[comp] + 0.5 * rng.standard_normal((n, centres.shape[1]))).astype(np.float32)


def kmeans_numpy(x: np.ndarray, nlist: int, rng: np.random.Generator, steps: int = 10) -> np.ndarray:
    """Lloyd's k-means on at most 256 points per list (as faiss samples), -> centroids (nlist, dim)."""
    sample = x[rng.choice(len(x), min(len(x), 256 * nlist), replace=False)]
    centroids = sample[rng.choice(len(sample), nlist, replace=False)].copy()
    for _ in range(steps):
        near = nearest(sample, centroids)
        for j in np.flatnonzero(np.bincount(near, minlength=nlist)):
            centroids[j] = sample[near == j].mean(axis=0)
    return centroids


def nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """x (n, dim) -> (n,) int32 the nearest centroid of each row."""
    return ((centroids**2).sum(1)[None] - 2 * x @ centroids.T).argmin(1).astype(np.int32)


def build_index(n: int, folder: str, faiss, rng: np.random.Generator, centres, weights) -> tuple[str, float]:
    """Write an IVF512,Flat index of n mixture vectors to folder; -> (path, seconds it took)."""
    x = mixture(n, centres, weights, rng)
    path = os.path.join(folder, f"ivf{NLIST}_{n}.index")
    start = time.perf_counter()
    if faiss is not None:
        index = faiss.index_factory(DIM, f"IVF{NLIST},Flat")
        faiss.extract_index_ivf(index).nprobe = 1
        index.train(x)
        index.add(x)
        faiss.write_index(index, path)
    else:
        centroids = kmeans_numpy(x, NLIST, rng)
        with open(path, "wb") as f:
            f.write(FeatureIndex(x, centroids, nearest(x, centroids)).to_faiss_bytes())
    return path, time.perf_counter() - start


def time_search(impls: dict, q: np.ndarray, repeats: int) -> tuple[dict, dict]:
    """Best time (s) and last (distances, ids) of each implementation, alternating within each repeat."""
    best = {name: float("inf") for name in impls}
    out = {}
    for _ in range(repeats):
        for name, search in impls.items():
            start = time.perf_counter()
            out[name] = search(q)
            best[name] = min(best[name], time.perf_counter() - start)
    return best, out


def mlx_search(index: FeatureIndex, mode: str):
    def search(q: np.ndarray):
        d, i = index.search(mx.array(q), K, mode=mode)
        mx.eval(d, i)
        return np.array(d), np.array(i)

    return search


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vectors", type=int, nargs="+", default=[20000], help="index sizes (default 20000)")
    ap.add_argument("--seconds", type=float, nargs="+", default=[5, 30],
                    help="audio lengths to search, 50 query frames per second (default 5 30)")
    ap.add_argument("--repeats", type=int, default=3, help="timed searches per implementation, best of")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="MLX device (default cpu)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="faiss OpenMP threads")
    args = ap.parse_args(argv)
    mx.set_default_device(mx.gpu if args.device == "gpu" else mx.cpu)

    try:
        import faiss
    except ImportError:
        faiss = None
        print("faiss-cpu is not installed (pip install 'rvc-mlx[faiss]'): the faiss column is left out and "
              "the index is clustered with numpy k-means instead of faiss's training.\n", flush=True)
    else:
        faiss.omp_set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((MIXTURE_CENTRES, DIM)).astype(np.float32)
    weights = 1.0 / np.arange(1, MIXTURE_CENTRES + 1) ** 0.8  # uneven cluster populations
    weights /= weights.sum()
    frames = [max(1, round(s * FRAMES_PER_SECOND)) for s in args.seconds]
    queries = mixture(max(frames), centres, weights, rng)

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for n in args.vectors:
            path, built = build_index(n, folder, faiss, rng, centres, weights)
            start = time.perf_counter()
            ours = FeatureIndex.load(path)
            loaded = time.perf_counter() - start
            sizes = np.bincount(np.array(ours.assign), minlength=NLIST)
            print(f"index of {n} vectors: built in {built:.1f} s, rvc-mlx load {loaded:.2f} s; list sizes "
                  f"min {sizes.min()}, mean {sizes.mean():.0f}, max {sizes.max()}", flush=True)
            impls = {"ivf": mlx_search(ours, "ivf"), "exact": mlx_search(ours, "exact")}
            if faiss is not None:
                reference = faiss.read_index(path)
                impls = {"faiss": lambda q, ref=reference: ref.search(q, K), **impls}
            for t, seconds in zip(frames, args.seconds, strict=True):
                best, out = time_search(impls, queries[:t], args.repeats)
                row = {"n": n, "frames": t, "seconds": seconds, **best}
                if faiss is not None:
                    row["ivf_differ"] = int((out["ivf"][1] != out["faiss"][1]).any(1).sum())
                rows.append(row)
                times = ", ".join(f"{name} {best[name] * 1e3:.1f} ms" for name in impls)
                print(f"  {seconds:g} s ({t} frames): {times}", flush=True)

    names = [name for name in ("faiss", "ivf", "exact") if name in rows[0]] if rows else []
    head = ["vectors", "audio", "frames"] + [f"{name} ms" for name in names]
    if faiss is not None:
        head += ["ivf / faiss", "ivf rows ≠ faiss"]
    print(f"\nk = {K}, IVF{NLIST} nprobe 1, dim {DIM}, MLX on {args.device}, best of {args.repeats}\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---:" for _ in head) + "|")
    for r in rows:
        cells = [str(r["n"]), f"{r['seconds']:g} s", str(r["frames"])] + [f"{r[k] * 1e3:.1f}" for k in names]
        if faiss is not None:
            cells += [f"{r['ivf'] / r['faiss']:.2f}x", f"{r['ivf_differ']} / {r['frames']}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
