"""Batch index plans: deterministic shuffles for training, padded+masked batches for eval."""
from typing import Iterator

import numpy as np


def train_batches(n: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
  """[steps, batch_size] example indices for one epoch; the order depends only on
  (seed, epoch), so a resumed run sees exactly the batches of an uninterrupted one.
  The last partial batch is dropped (a different one each epoch) so shapes never change."""
  if n < batch_size:
    raise ValueError(f"batch size {batch_size} exceeds the {n} training examples")
  perm = np.random.default_rng([seed, epoch]).permutation(n)
  steps = n // batch_size
  return perm[: steps * batch_size].reshape(steps, batch_size)


def eval_batches(n: int, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields (indices, mask) with a fixed batch shape: the last batch is padded with index 0
  and mask False, so one compiled function serves every batch and no example is dropped."""
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)
    mask = idx < n
    yield np.where(mask, idx, 0), mask
