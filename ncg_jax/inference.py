"""Batched evaluation with fixed shapes: pad the last batch, mask it out, compile once."""
from typing import Callable

import jax
import numpy as np

from ncg_jax import sharding
from ncg_jax.data import eval_batches
from ncg_jax.train.trainer import Trained, to_input


def map_batches(fn: Callable, *arrays: np.ndarray, batch_size: int = 512):
  """Applies a jitted `fn` to fixed-size batches of `arrays` (rows aligned), split over
  the devices, and returns its outputs (a pytree of arrays) concatenated over all rows,
  padding removed."""
  n = len(arrays[0])
  bs = sharding.round_batch(min(batch_size, n))
  outs, masks = [], []
  for idx, mask in eval_batches(n, bs):
    rows = sharding.local(idx)
    batch = sharding.shard(*(a[rows] for a in arrays))
    outs.append(fn(*batch) if isinstance(batch, tuple) else fn(batch))
    masks.append(mask)
  outs = sharding.to_host(outs)
  return jax.tree.map(lambda *xs: np.concatenate([x[m] for x, m in zip(xs, masks)]), *outs)


def logits_and_features(trained: Trained, x: np.ndarray, batch_size: int = 512):
  """(logits [N, K], penultimate features [N, D]) of `trained` in eval mode."""
  fn = jax.jit(lambda v, xb: trained.model.apply(v, to_input(xb), train=False))
  variables = trained.variables()
  return map_batches(lambda xb: fn(variables, xb), x, batch_size=batch_size)
