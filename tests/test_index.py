"""Feature retrieval: the synthetic index is RVC-shaped and deterministic, `blend` equals the original's code,
the original's NaN cases are fixed, and bad index files fail with one line naming the file and the fix."""

import filecmp

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from rvc_mlx import index as index_mod  # noqa: E402
from rvc_mlx.index import (  # noqa: E402
    FeatureIndex,
    IndexFileError,
    synthetic_features,
    write_index,
    write_synthetic_index,
)


@pytest.fixture(scope="module")
def idx_path(tmp_path_factory):
    return write_synthetic_index(tmp_path_factory.mktemp("index") / "added_IVF51_Flat_nprobe_1_synth_v2.index")


@pytest.fixture(scope="module")
def fidx(idx_path):
    return FeatureIndex.read(idx_path)


def original_blend(index, big_npy, feats, index_rate):
    """rvc/infer/pipeline.py, transcribed literally (feats: torch (1, T, d) float32)."""
    npy = feats[0].cpu().numpy()
    score, ix = index.search(npy, k=8)
    weight = np.square(1 / score)
    weight /= weight.sum(axis=1, keepdims=True)
    npy = np.sum(big_npy[ix] * np.expand_dims(weight, axis=2), axis=1)
    import torch

    return torch.from_numpy(npy).unsqueeze(0) * index_rate + (1 - index_rate) * feats


def _one_line(e):
    return "\n" not in str(e)


def test_synthetic_index_is_an_ivf_flat_of_the_right_dim_and_size(fidx):
    ivf = faiss.extract_index_ivf(fidx.index)
    assert isinstance(fidx.index, faiss.IndexIVFFlat)
    assert ivf.nlist == min(int(16 * np.sqrt(2000)), 2000 // 39) == 51
    assert fidx.dim == 768 and fidx.ntotal == fidx.index.ntotal == 2000 and fidx.nprobe == 1
    assert fidx.vectors.dtype == np.float32 and fidx.vectors.shape == (2000, 768)
    np.testing.assert_array_equal(fidx.vectors, synthetic_features(2000, 768, seed=0))


def test_v1_width_and_explicit_cluster_count_are_honoured(tmp_path):
    f = FeatureIndex.read(write_synthetic_index(tmp_path / "v1.index", n_vectors=500, dim=256, n_clusters=4))
    assert f.dim == 256 and f.ntotal == 500 and faiss.extract_index_ivf(f.index).nlist == 4


def test_write_index_stores_given_vectors_and_refuses_bad_shapes(tmp_path):
    vecs = synthetic_features(300, dim=32, seed=5)
    f = FeatureIndex.read(write_index(tmp_path / "mine.index", vecs))
    np.testing.assert_array_equal(f.vectors, vecs)
    assert faiss.extract_index_ivf(f.index).nlist == 300 // 39
    with pytest.raises(ValueError, match="non-empty"):
        write_index(tmp_path / "bad.index", np.zeros((0, 32), np.float32))
    with pytest.raises(ValueError, match="n_clusters"):
        write_index(tmp_path / "bad.index", vecs, n_clusters=301)
    assert not (tmp_path / "bad.index").exists()


def test_synthetic_index_is_byte_identical_across_writes_and_thread_counts(idx_path, tmp_path):
    before = faiss.omp_get_max_threads()
    try:
        faiss.omp_set_num_threads(max(2, before))
        again = write_synthetic_index(tmp_path / "again.index")
    finally:
        faiss.omp_set_num_threads(before)
    assert faiss.omp_get_max_threads() == before  # the writer restores the caller's thread count
    assert filecmp.cmp(idx_path, again, shallow=False)
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file


def test_synthetic_index_does_not_depend_on_openblas_kernels(tmp_path):
    # k-means through BLAS gives different centroids with OpenBLAS's Prescott and SkylakeX GEMM kernels
    import os
    import subprocess
    import sys

    code = ("import sys, rvc_mlx; from rvc_mlx.index import write_synthetic_index; "
            "from rvc_mlx.checkpoints import file_sha256; "
            "print(file_sha256(write_synthetic_index(sys.argv[1], n_vectors=2000, dim=768)))")
    digests = set()
    for core in ("Prescott", None):
        env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
        if core:
            env["OPENBLAS_CORETYPE"] = core
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / f"{core}.index")], env=env,
                             capture_output=True, text=True, check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1
    assert faiss.cvar.distance_compute_blas_threshold < 2**30  # restored for real indexes


def test_synthetic_index_training_prints_no_faiss_warning(tmp_path, capfd):
    write_synthetic_index(tmp_path / "few.index", n_vectors=200, dim=64, n_clusters=20)  # 10 points/centroid
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("index_rate", [0.0, 0.75, 1.0])
def test_blend_equals_the_original_code_bit_for_bit(fidx, index_rate):
    torch = pytest.importorskip("torch")
    feats = np.concatenate([synthetic_features(300, seed=0, stream=1),  # near the stored clusters
                            np.random.default_rng(1).standard_normal((200, 768)).astype(np.float32)])
    want = original_blend(fidx.index, fidx.vectors, torch.from_numpy(feats).unsqueeze(0), index_rate)[0].numpy()
    got = fidx.blend(feats, index_rate)
    assert got.dtype == np.float32 and got.shape == feats.shape
    np.testing.assert_array_equal(got, want)


def test_partly_missing_neighbours_still_match_the_original_bit_for_bit(tmp_path):
    torch = pytest.importorskip("torch")
    # ~5 vectors per list and nprobe 1: most queries get fewer than 8 neighbours (ids -1)
    f = FeatureIndex.read(write_synthetic_index(tmp_path / "tiny_lists.index", n_vectors=400, dim=64, n_clusters=80))
    feats = synthetic_features(200, dim=64, seed=0, stream=1)
    assert (f.search(feats)[1] < 0).any()
    want = original_blend(f.index, f.vectors, torch.from_numpy(feats).unsqueeze(0), 0.75)[0].numpy()
    np.testing.assert_array_equal(f.blend(feats, 0.75), want)


def test_retrieval_is_identical_when_processed_in_chunks(fidx, monkeypatch):
    feats = synthetic_features(100, seed=0, stream=2)
    whole = fidx.retrieved(feats)
    monkeypatch.setattr(index_mod, "_CHUNK_ROWS", 7)
    np.testing.assert_array_equal(fidx.retrieved(feats), whole)


def test_index_rate_zero_returns_the_features_without_searching(fidx, monkeypatch):
    feats = synthetic_features(10, seed=0, stream=1)
    monkeypatch.setattr(FeatureIndex, "search", lambda *a, **k: pytest.fail("searched at index_rate 0"))
    out = fidx.blend(feats, 0.0)
    np.testing.assert_array_equal(out, feats)
    assert out is not feats


def test_exact_match_queries_take_the_stored_vector_instead_of_nan(fidx):
    import torch

    feats = np.array(fidx.vectors[[0, 7, 1999]])
    with np.errstate(divide="ignore", invalid="ignore"):
        assert torch.isnan(original_blend(fidx.index, fidx.vectors, torch.from_numpy(feats)[None], 0.75)).any()
    np.testing.assert_array_equal(fidx.retrieved(feats), feats)
    assert np.isfinite(fidx.blend(feats, 0.75)).all()


def test_missing_neighbours_are_dropped_and_rows_without_any_are_unchanged(fidx):
    # 4 neighbours found, 4 missing (-1): the mean is over the 4 found; none found: the query row is kept
    score = np.array([[1.0, 4.0, 4.0, 16.0] + [np.finfo(np.float32).max] * 4, [np.finfo(np.float32).max] * 8],
                     dtype=np.float32)
    ix = np.array([[3, 5, 6, 9, -1, -1, -1, -1], [-1] * 8])

    class Stub:
        def search(self, q, k):
            return score, ix

    f = FeatureIndex(index=Stub(), vectors=fidx.vectors, dim=fidx.dim, path=fidx.path)
    feats = synthetic_features(2, seed=0, stream=3)
    out = f.retrieved(feats)
    w = np.array([1, 1 / 16, 1 / 16, 1 / 256])
    np.testing.assert_allclose(out[0], (w / w.sum()) @ fidx.vectors[[3, 5, 6, 9]], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out[1], feats[1])
    np.testing.assert_array_equal(f.blend(feats, 0.5)[1], feats[1])


def test_overflowing_weights_fall_back_to_relative_distances(fidx):
    score = np.array([[1e-30, 4e-30] + [1.0] * 6], dtype=np.float32)  # 1/score**2 overflows float32

    class Stub:
        def search(self, q, k):
            return score, np.arange(8)[None]

    out = FeatureIndex(index=Stub(), vectors=fidx.vectors, dim=fidx.dim).retrieved(fidx.vectors[:1])
    np.testing.assert_allclose(out[0], (16 * fidx.vectors[0] + fidx.vectors[1]) / 17, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "high", None])
def test_index_rate_out_of_range_is_refused_in_one_line(fidx, bad):
    with pytest.raises(ValueError, match=r"index_rate must be in \[0, 1\]") as e:
        fidx.blend(synthetic_features(2), bad)
    assert _one_line(e.value)


def test_features_of_the_wrong_shape_are_refused(fidx):
    with pytest.raises(ValueError, match=r"\(frames, 768\)"):
        fidx.blend(np.zeros((5, 256), np.float32), 0.5)
    with pytest.raises(ValueError, match="k must be"):
        fidx.search(np.zeros((5, 768), np.float32), k=0)


def test_empty_query_gives_empty_features(fidx):
    assert fidx.blend(np.zeros((0, 768), np.float32), 0.75).shape == (0, 768)


def test_missing_file_fails_in_one_line_naming_it_and_the_fix(tmp_path):
    p = tmp_path / "added_IVF1_Flat_nope.index"
    with pytest.raises(IndexFileError, match="not found") as e:
        FeatureIndex.read(p)
    assert _one_line(e.value) and str(p) in str(e.value) and "added_IVF<n>_Flat" in str(e.value)


def test_garbage_file_fails_in_one_line_without_the_cpp_message(tmp_path):
    p = tmp_path / "junk.index"
    p.write_bytes(b"this is not a faiss index" * 4)
    with pytest.raises(IndexFileError, match="is not a faiss index") as e:
        FeatureIndex.read(p)
    msg = str(e.value)
    assert _one_line(msg) and str(p) in msg and "not recognized" in msg
    assert "Error in" not in msg and ".cpp" not in msg


def test_truncated_index_fails_in_one_line(idx_path, tmp_path):
    p = tmp_path / "cut.index"
    p.write_bytes(idx_path.read_bytes()[:5000])
    with pytest.raises(IndexFileError, match="is not a faiss index") as e:
        FeatureIndex.read(p)
    assert _one_line(e.value) and ".cpp" not in str(e.value)


def test_empty_trained_index_points_to_the_added_one(tmp_path):
    trained = tmp_path / "trained_IVF4_Flat_nprobe_1_x_v2.index"
    faiss.write_index(faiss.index_factory(768, "IVF4,Flat"), str(trained))
    write_synthetic_index(tmp_path / "added_IVF4_Flat_nprobe_1_x_v2.index", n_vectors=200, n_clusters=4)
    with pytest.raises(IndexFileError, match="holds no vectors") as e:
        FeatureIndex.read(trained)
    assert _one_line(e.value) and "use " + str(tmp_path / "added_IVF4_Flat_nprobe_1_x_v2.index") in str(e.value)


def test_wrong_dimension_fails_in_one_line_naming_file_and_widths(tmp_path):
    f = FeatureIndex.read(write_synthetic_index(tmp_path / "v1.index", n_vectors=200, dim=256))
    f.check_dim(256, "a v1 model")
    with pytest.raises(IndexFileError) as e:
        f.check_dim(768, "a v2 model")
    msg = str(e.value)
    assert _one_line(msg) and str(f.path) in msg and "256-dim" in msg and "a v2 model uses 768-dim" in msg
    assert "use the index trained with this model" in msg


def test_missing_faiss_is_reported_with_the_install_command(idx_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(IndexFileError, match="pip install faiss-cpu") as e:
        FeatureIndex.read(idx_path)
    assert _one_line(e.value)


def test_ivf_without_reconstruct_support_falls_back_to_the_direct_map(idx_path, monkeypatch):
    calls = []
    real = faiss.read_index

    class NoReconstruct:
        """An IVF index on which reconstruct_n fails until make_direct_map is called, as in older faiss."""

        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def reconstruct_n(self, i0, n):
            if not calls:
                raise RuntimeError("Error in f at x.cpp:1: direct map not initialized")
            return self.inner.reconstruct_n(i0, n)

    monkeypatch.setattr(faiss, "read_index", lambda p: NoReconstruct(real(p)))
    monkeypatch.setattr(faiss, "extract_index_ivf", lambda ix: type("M", (), {
        "make_direct_map": lambda self: calls.append(1)})())
    f = FeatureIndex.read(idx_path)
    assert calls == [1]
    np.testing.assert_array_equal(f.vectors, synthetic_features(2000))
