import numpy as np
import pytest
from scipy import ndimage
from sklearn.datasets import load_digits

from ncg_jax import batching, data
from ncg_jax.data import digits
from ncg_jax.registry import ConfigError


def test_upscale_is_bilinear_against_scipy():
  imgs = load_digits().images[:20]
  ref = ndimage.zoom(imgs * (255.0 / 16.0), (1, 28 / 8, 28 / 8), order=1, grid_mode=False)
  ours = digits.upscale(imgs)[..., 0].astype(np.float64)
  assert ours.shape == (20, 28, 28)
  np.testing.assert_allclose(ours, np.clip(np.rint(ref), 0, 255), atol=1)


def test_digits_split_is_the_whole_sklearn_set(digits9):
  sk = load_digits()
  k = 9
  assert len(digits9.train) + len(digits9.test) + len(digits9.ood) == len(sk.target)
  assert len(digits9.ood) == np.sum(sk.target == k)
  assert np.all(digits9.ood.y == k)
  # every held-out image is an upscaled sklearn class-k image, each exactly once
  sk_k = digits.upscale(sk.images[sk.target == k])
  match = [np.flatnonzero((sk_k == img).all(axis=(1, 2, 3))) for img in digits9.ood.x]
  assert sorted(int(m[0]) for m in match) == list(range(len(sk_k)))


def test_heldout_class_absent_and_labels_reindexed(data_dir):
  full = data.load("digits", data_dir)
  for k in (0, 4, 9):
    ds = data.load(f"digitswo{k}", data_dir)
    assert ds.num_classes == 9 and ds.held_out == k
    for split in (ds.train, ds.test):
      assert split.y.min() == 0 and split.y.max() == 8
      # no image of the held-out class survives in train or test
      orig = ds.to_original(split.y)
      assert k not in orig
    # re-indexing is invertible and consistent with the full dataset
    keep = full.train.y != k
    np.testing.assert_array_equal(ds.to_original(ds.train.y), full.train.y[keep])
    np.testing.assert_array_equal(ds.from_original(full.train.y[keep]), ds.train.y)
    np.testing.assert_array_equal(ds.train.x, full.train.x[keep])
    n_k = np.sum(full.train.y == k) + np.sum(full.test.y == k)
    assert len(ds.ood) == n_k and np.all(ds.ood.y == k)


@pytest.mark.parametrize("name,msg", [
    ("digitswo10", "out of range"), ("nope", "unknown dataset"), ("cifar10wo10", "out of range"),
    ("mnistwo9", r"python -m ncg_jax.data.prepare mnist --data_dir="),
    ("cifar100coarse", r"pip install '.\[tf\]' && python -m ncg_jax.data.prepare cifar100coarse"),
    ("npz:/no/such/file.npz", "does not exist"), ("folder:/no/such/dir", "needs a 'train'")])
def test_bad_names(name, msg, data_dir):
  with pytest.raises(ConfigError, match=msg):
    data.load(name, data_dir)


def test_train_batches_deterministic_and_epoch_dependent():
  a = batching.train_batches(100, 16, seed=3, epoch=2)
  np.testing.assert_array_equal(a, batching.train_batches(100, 16, seed=3, epoch=2))
  assert a.shape == (6, 16) and len(np.unique(a)) == 96
  assert not np.array_equal(a, batching.train_batches(100, 16, seed=3, epoch=3))
  with pytest.raises(ValueError):
    batching.train_batches(10, 16, 0, 0)


def test_eval_batches_pad_and_cover_every_example_once():
  seen = []
  for idx, mask in batching.eval_batches(23, 8):
    assert idx.shape == (8,) and mask.shape == (8,)
    seen.extend(idx[mask])
  assert sorted(seen) == list(range(23))
