"""TFDS builder `digits`: scikit-learn's 1,797 handwritten digits as 28x28x1 uint8 images.

The 8x8 images (values 0..16) are scaled to 0..255 and upscaled bilinearly to 28x28 so that
every MNIST model runs unchanged. The train/test split is fixed: per class, a permutation
from `SPLIT_SEED` puts the first 80% in train. Images are stored as uint8 tensors (not PNG)
so that preparing and reading need no TensorFlow.
"""
import numpy as np
import tensorflow_datasets as tfds

from ncg_jax.data import split_per_class

SPLIT_SEED = 0
TEST_FRACTION = 0.2
SIZE = 28


def upscale(images_Nx8x8: np.ndarray, size: int = SIZE) -> np.ndarray:
  """Bilinear (align-corners) upscale of 0..16 images to uint8 size x size x 1."""
  n, h, w = images_Nx8x8.shape
  pos = lambda m: np.linspace(0.0, m - 1.0, size)
  yy, xx = pos(h), pos(w)
  y0 = np.minimum(np.floor(yy).astype(int), h - 2)
  x0 = np.minimum(np.floor(xx).astype(int), w - 2)
  wy, wx = (yy - y0)[:, None], (xx - x0)[None, :]
  img = images_Nx8x8.astype(np.float64) * (255.0 / 16.0)
  a = img[:, y0][:, :, x0]
  b = img[:, y0][:, :, x0 + 1]
  c = img[:, y0 + 1][:, :, x0]
  d = img[:, y0 + 1][:, :, x0 + 1]
  out = (1 - wy) * ((1 - wx) * a + wx * b) + wy * ((1 - wx) * c + wx * d)
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)[..., None]


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's handwritten digits (UCI optdigits test set), 28x28x1."""
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(SIZE, SIZE, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=[str(i) for i in range(10)]),
            "index": tfds.features.Scalar(dtype=np.int64),
        }),
        supervised_keys=("image", "label"),
        homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
    )

  def _split_generators(self, dl_manager):
    from sklearn.datasets import load_digits
    bunch = load_digits()
    images, labels = upscale(bunch.images), bunch.target.astype(np.int64)
    return {name: self._generate_examples(images, labels, idx)
            for name, idx in split_per_class(labels, TEST_FRACTION, SPLIT_SEED).items()}

  def _generate_examples(self, images, labels, indices):
    for i in indices:
      yield int(i), {"image": images[i], "label": int(labels[i]), "index": int(i)}
