"""RVC's optional feature retrieval (faiss `IVF{n},Flat` index over HuBERT features), in numpy + faiss.

IndexFileError: one-line error for an unusable index file (missing, not faiss, empty, wrong width) or no faiss.
FeatureIndex: a read index; `.index` (faiss), `.vectors` (big_npy, (N, d) float32), `.dim`, `.path`.
FeatureIndex.read(path): load an index written by RVC training (`added_IVF*_Flat_*.index`) and its vectors.
FeatureIndex.check_dim(d, what): refuse a model whose feature width (768 v2 / 256 v1) differs from the index's.
FeatureIndex.search(feats, k): faiss search with the nprobe stored in the file -> (score, ix), both (T, k).
FeatureIndex.retrieved(feats, k): the inverse-square-distance weighted mean of the k nearest stored vectors.
FeatureIndex.blend(feats, index_rate, k): index_rate * retrieved + (1 - index_rate) * feats, as the original.
synthetic_features(n, dim, seed, stream): deterministic speech-feature-like vectors (Gaussian mixture), float32.
write_index(path, big_npy, n_clusters): an `IVF{n},Flat` index of given vectors, built like RVC's training.
write_synthetic_index(path, n_vectors, dim, seed, n_clusters): write_index of synthetic_features, deterministic.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Rows retrieved per numpy pass: bounds the (rows, k, d) gather (500 MB at T=20000 for d=768) without changing
# the arithmetic, since every row is reduced on its own.
_CHUNK_ROWS = 4096
# Modes of the synthetic mixture: fixed, so indexes and query sets drawn with the same seed share centres.
_SYNTH_MODES = 32
_FIX = "pass the .index file written by RVC training (added_IVF<n>_Flat_*.index)"


class IndexFileError(ValueError):
    """An index file is missing, unreadable, empty or of the wrong feature width, or faiss is not installed."""


def _faiss():
    try:
        import faiss
    except ImportError as e:  # faiss is optional: only retrieval needs it
        raise IndexFileError(f"feature retrieval needs faiss, which is not installed ({e}): "
                             "pip install faiss-cpu, or run with index_rate 0 / no index") from None
    return faiss


def _faiss_message(e: Exception) -> str:
    """faiss's RuntimeError is 'Error in <C++ signature> at <file>:<line>: <reason>' (sometimes with a
    traceback); keep the reason only."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    m = re.search(r"\bat \S+:\d+: (.*)$", text)
    return (m.group(1) if m else text).strip()


@contextmanager
def _one_thread(faiss):
    """k-means and list filling are run on one thread so that a synthetic index does not depend on how many
    cores (and so which BLAS blocking) the machine has; the caller's thread count is restored."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


@dataclass(eq=False)
class FeatureIndex:
    """A faiss index of training features and the vectors it holds, as RVC's pipeline loads them."""

    index: object = field(repr=False)
    vectors: np.ndarray = field(repr=False)  # big_npy: (ntotal, dim) float32, row i = stored vector i
    dim: int
    path: Path | None = None

    @property
    def ntotal(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def nprobe(self) -> int | None:
        """Lists probed per query (stored in the file; RVC leaves faiss's default 1); None for non-IVF."""
        faiss = _faiss()
        try:
            return int(faiss.extract_index_ivf(self.index).nprobe)
        except RuntimeError:
            return None

    @classmethod
    def read(cls, path: str | os.PathLike) -> FeatureIndex:
        """faiss.read_index + index.reconstruct_n(0, ntotal), with one-line errors naming the file."""
        path = Path(path)
        if not path.is_file():
            what = "is a directory, not a file" if path.is_dir() else "not found"
            raise IndexFileError(f"index file {what}: {path}; {_FIX}")
        faiss = _faiss()
        try:
            index = faiss.read_index(str(path))  # the SWIG binding takes str only
        except RuntimeError as e:
            raise IndexFileError(f"{path} is not a faiss index ({_faiss_message(e)}); {_FIX}") from None
        if index.ntotal == 0:
            # RVC's trained_*.index is the trained, empty quantizer; the vectors are in added_*.index beside it
            added = path.with_name(path.name.replace("trained", "added"))
            hint = f"use {added}" if added != path and added.is_file() else _FIX
            raise IndexFileError(f"{path} holds no vectors (an empty/trained-only index); {hint}")
        try:
            vectors = index.reconstruct_n(0, index.ntotal)
        except RuntimeError:
            # older faiss reconstructs IVF vectors only through the id -> list direct map
            try:
                faiss.extract_index_ivf(index).make_direct_map()
                vectors = index.reconstruct_n(0, index.ntotal)
            except RuntimeError as e:
                raise IndexFileError(f"{path}: cannot read the stored vectors back ({_faiss_message(e)}); "
                                     f"{_FIX}") from None
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        vectors.setflags(write=False)
        return cls(index=index, vectors=vectors, dim=int(index.d), path=path)

    def check_dim(self, d: int, what: str = "the model") -> None:
        """Raise IndexFileError when `what` (e.g. "a v2 model") uses d-dim features and the index does not."""
        if int(d) != self.dim:
            raise IndexFileError(f"{self.path} holds {self.dim}-dim features but {what} uses {int(d)}-dim ones "
                                 "(v1 indexes are 256-dim, v2 768-dim); use the index trained with this model")

    def _queries(self, feats: np.ndarray) -> np.ndarray:
        q = np.asarray(feats)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"features must be (frames, {self.dim}) for {self.path}, got shape {q.shape}")
        return np.ascontiguousarray(q, dtype=np.float32)  # faiss takes C-contiguous float32 only

    def search(self, feats: np.ndarray, k: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """index.search(feats, k) with the stored nprobe: squared L2 distances (T, k) float32 and ids (T, k)
        int64, nearest first; a neighbour the probed lists could not supply is id -1, distance FLT_MAX."""
        if int(k) < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        return self.index.search(self._queries(feats), int(k))

    def retrieved(self, feats: np.ndarray, k: int = 8) -> np.ndarray:
        """The retrieved features (T, d) float32: each row is the mean of its k nearest stored vectors weighted
        by 1 / distance**2, computed exactly as RVC's pipeline (same float32 operations in the same order, so
        the twin's literal transcription gives the same bits) wherever the original is finite.

        Where the original is not finite this returns the limit of its formula instead:
          - exact matches (distance 0, where 1/score is inf and the original gives NaN): the row is the mean of
            the neighbours at distance 0, i.e. the matching stored vector;
          - missing neighbours (id -1, which faiss returns when the nprobe probed lists hold fewer than k vectors)
            are dropped from the mean (the original already gives them weight 0 unless every neighbour is
            missing, where it divides 0 by 0);
          - a row with no neighbour at all is the query itself, so blending leaves those features unchanged;
          - weights that overflow or underflow float32 are recomputed relative to the nearest distance.
        """
        q = self._queries(feats)
        out = np.empty_like(q)
        for lo in range(0, q.shape[0], _CHUNK_ROWS):
            rows = q[lo:lo + _CHUNK_ROWS]
            out[lo:lo + _CHUNK_ROWS] = self._retrieve_rows(rows, k)
        return out

    def _retrieve_rows(self, npy: np.ndarray, k: int) -> np.ndarray:
        score, ix = self.search(npy, k)
        valid = ix >= 0
        with np.errstate(divide="ignore", over="ignore", invalid="ignore", under="ignore"):
            weight = np.square(1 / score)  # the original's lines, verbatim
            weight[~valid] = 0  # already 0 in the original (1 / FLT_MAX squared underflows); made explicit
            weight /= weight.sum(axis=1, keepdims=True)
        bad = ~np.isfinite(weight).all(axis=1)
        if bad.any():
            weight[bad] = _limit_weights(score[bad].astype(np.float64), valid[bad])
        # id -1 indexes the last row, as in the original; its weight is 0 so it adds nothing
        npy_out = np.sum(self.vectors[ix] * np.expand_dims(weight, axis=2), axis=1)
        empty = ~valid.any(axis=1)
        if empty.any():
            npy_out[empty] = npy[empty]
        return npy_out

    def blend(self, feats: np.ndarray, index_rate: float, k: int = 8) -> np.ndarray:
        """index_rate * retrieved(feats) + (1 - index_rate) * feats, float32 (T, d), in the original's order;
        index_rate 0 returns a copy of feats without searching."""
        rate = _check_rate(index_rate)
        if rate == 0:
            return np.array(self._queries(feats), dtype=np.float32, copy=True)
        q = self._queries(feats)
        return self.retrieved(q, k) * rate + (1 - rate) * q


def _limit_weights(score: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Weights of rows whose float32 1/score**2 is not finite, as the limit of that formula (float64)."""
    w = np.zeros(score.shape, dtype=np.float64)
    for r in range(score.shape[0]):
        s, v = score[r], valid[r]
        if not v.any():
            continue  # no neighbour: the caller keeps the query row
        exact = v & (s == 0)
        if exact.any():
            w[r] = exact  # 1/d**2 -> inf: all the mass goes, equally, to the exact matches
        else:
            d = np.abs(s[v])
            w[r, v] = np.square(d.min() / d)  # same ratios as 1/d**2, without overflow
        total = w[r].sum()
        w[r] = w[r] / total if np.isfinite(total) and total > 0 else v / v.sum()  # inf/NaN distances: plain mean
    return w.astype(np.float32)


def _check_rate(index_rate: float) -> float:
    try:
        rate = float(index_rate)
    except (TypeError, ValueError):
        rate = math.nan
    if not 0.0 <= rate <= 1.0:  # also refuses NaN
        raise ValueError(f"index_rate must be in [0, 1], got {index_rate!r} "
                         "(0 ignores the index, 1 uses only retrieved features)")
    return rate


def synthetic_features(n: int, dim: int = 768, seed: int = 0, stream: int = 0) -> np.ndarray:
    """(n, dim) float32 drawn from a fixed 32-mode Gaussian mixture (PCG64), like clustered HuBERT features.

    The mixture depends on `seed` only; `stream` picks independent draws from it, so write_synthetic_index
    (stream 0) and queries of another stream land in the same clusters, as a voice's inference features do.
    """
    if n < 0 or dim < 1:
        raise ValueError(f"need n >= 0 and dim >= 1, got n={n}, dim={dim}")
    centres = np.random.Generator(np.random.PCG64([seed, 0])).standard_normal((_SYNTH_MODES, dim))
    rng = np.random.Generator(np.random.PCG64([seed, 1 + stream]))
    modes = rng.integers(_SYNTH_MODES, size=n)
    return (centres[modes] + 0.5 * rng.standard_normal((n, dim))).astype(np.float32)


def write_synthetic_index(path: str | os.PathLike, n_vectors: int = 2000, dim: int = 768, seed: int = 0,
                          n_clusters: int | None = None) -> Path:
    """write_index of synthetic_features(n_vectors, dim, seed): byte-identical for the same arguments."""
    return write_index(path, synthetic_features(int(n_vectors), dim, seed), n_clusters, blas_free=True)


def write_index(path: str | os.PathLike, big_npy: np.ndarray, n_clusters: int | None = None,
                blas_free: bool = False) -> Path:
    """Write an `IVF{n},Flat` index of big_npy (N, d) as RVC's train_index does (index_factory, train, add in
    batches of 8192, write_index; nprobe left at 1) and return its path, written atomically.
    n = min(int(16 * sqrt(N)), N // 39), at least 1, unless n_clusters is given. `blas_free` computes k-means
    distances with faiss's own kernels: with BLAS, the index bytes depend on which GEMM kernels OpenBLAS picked
    (Prescott vs SkylakeX give different centroids), so a synthetic test index would not be reproducible."""
    faiss = _faiss()
    path = Path(path)
    big_npy = np.ascontiguousarray(big_npy, dtype=np.float32)
    if big_npy.ndim != 2 or big_npy.shape[0] < 1 or big_npy.shape[1] < 1:
        raise ValueError(f"index vectors must be a non-empty (N, d) array, got shape {big_npy.shape}")
    n, dim = big_npy.shape
    nlist = max(1, min(int(16 * math.sqrt(n)), n // 39)) if n_clusters is None else int(n_clusters)
    if not 1 <= nlist <= n:
        raise ValueError(f"need 1 <= n_clusters <= number of vectors, got n_clusters={nlist}, N={n}")
    index = faiss.index_factory(dim, f"IVF{nlist},Flat")
    # faiss prints a warning to stderr when k-means gets fewer than 39 points per centroid; small test indexes
    # are small on purpose, so the threshold is lowered to what they have (it only gates that warning).
    index.cp.min_points_per_centroid = min(index.cp.min_points_per_centroid, n // nlist)
    threshold = faiss.cvar.distance_compute_blas_threshold
    if blas_free:
        faiss.cvar.distance_compute_blas_threshold = 2**30
    try:
        with _one_thread(faiss):
            index.train(big_npy)
            for lo in range(0, n, 8192):  # RVC adds in batches of 8192
                index.add(big_npy[lo:lo + 8192])
    finally:
        faiss.cvar.distance_compute_blas_threshold = threshold
    path.parent.mkdir(parents=True, exist_ok=True)
    # atomic: readers never see a half-written index, and a failed write leaves no stray file
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        faiss.write_index(index, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
