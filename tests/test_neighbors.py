import numpy as np
import pytest

from ncg_jax import neighbors


def brute_force(db, q, k):
  d = np.sqrt(((q[:, None, :].astype(np.float64) - db[None].astype(np.float64)) ** 2).sum(-1))
  idx = np.argsort(d, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(d, idx, 1), idx


@pytest.mark.parametrize("backend", ["faiss", "jax"])
@pytest.mark.parametrize("k", [1, 5])
def test_against_numpy_brute_force(backend, k):
  rng = np.random.default_rng(0)
  db = rng.normal(size=(1000, 37)).astype(np.float32)
  q = rng.normal(size=(130, 37)).astype(np.float32)
  dist, idx = neighbors.nearest(db, q, k=k, backend=backend, query_block=64, db_block=300)
  ref_d, ref_i = brute_force(db, q, k)
  np.testing.assert_array_equal(idx, ref_i)
  np.testing.assert_allclose(dist, ref_d, rtol=1e-5)
  assert dist.dtype == np.float32 and idx.dtype == np.int64


def test_images_are_flattened_and_exact_duplicates_have_distance_zero():
  rng = np.random.default_rng(1)
  db = rng.random((50, 4, 4, 1)).astype(np.float32)
  for backend in ("faiss", "jax"):
    dist, idx = neighbors.nearest(db, db[[3, 7, 11]], backend=backend)
    np.testing.assert_array_equal(idx[:, 0], [3, 7, 11])
    np.testing.assert_allclose(dist[:, 0], 0.0, atol=1e-6)


def test_bad_arguments():
  db = np.zeros((5, 3), np.float32)
  with pytest.raises(ValueError):
    neighbors.nearest(db, np.zeros((2, 4)), k=1)
  with pytest.raises(ValueError):
    neighbors.nearest(db, np.zeros((2, 3)), k=6)
  with pytest.raises(ValueError, match="valid"):
    neighbors.nearest(db, np.zeros((2, 3)), backend="annoy")


def test_columns_return_the_same_distances_as_the_full_result():
  rng = np.random.default_rng(4)
  db, q = rng.normal(size=(300, 8)).astype(np.float32), rng.normal(size=(20, 8)).astype(np.float32)
  dist, idx = neighbors.nearest(db, q, k=30, backend="jax")
  d2, i2 = neighbors.nearest(db, q, k=30, backend="jax", columns=(0, 29))
  np.testing.assert_array_equal(i2, idx[:, [0, 29]])
  np.testing.assert_allclose(d2, dist[:, [0, 29]], rtol=1e-6)


def test_exact_ties_go_to_the_lowest_index_across_blocks_and_nan_rows_are_never_nearest():
  """Quantised rows (multiples of 1/4 in 16 dimensions) make every squared distance exact in
  float32, so ties are exact: the 1-NN (two reductions per block) and the k-NN (`top_k`)
  paths both return the lowest index of the tied rows, as numpy's stable argsort does, also
  when the tied rows sit in different database blocks. A row with a NaN is never nearest."""
  rng = np.random.default_rng(6)
  base = (rng.integers(0, 5, size=(40, 16)) / 4).astype(np.float32)
  db = np.concatenate([base, base[::-1], base])  # every row three times, in 3+ blocks
  q = np.concatenate([base[rng.integers(0, 40, 30)],
                      (rng.integers(0, 5, size=(30, 16)) / 4).astype(np.float32)])
  ref_d, ref_i = brute_force(db, q, 3)
  assert (ref_d[:, 0] == ref_d[:, 1]).all()  # every query has tied nearest rows
  for k in (1, 3):
    _, idx = neighbors.nearest(db, q, k=k, backend="jax", query_block=16, db_block=50)
    np.testing.assert_array_equal(idx, ref_i[:, :k])
  gone = np.unique(ref_i[:, 0])
  db[gone, 5] = np.nan
  d = np.sqrt(((q[:, None, :].astype(np.float64) - db[None]) ** 2).sum(-1))
  d[:, gone] = np.inf
  _, idx = neighbors.nearest(db, q, backend="jax", query_block=16, db_block=50)
  np.testing.assert_array_equal(idx[:, 0], np.argmin(d, axis=1))
  assert not np.isin(idx, gone).any()
