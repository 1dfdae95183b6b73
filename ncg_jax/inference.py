"""Model outputs over a whole split, in fixed-shape padded batches (`data.map_batches`)."""
import jax
import numpy as np

from ncg_jax.data import map_batches
from ncg_jax.train.trainer import Trained, to_input


def logits_and_features(trained: Trained, x: np.ndarray, batch_size: int = 512):
  """(logits [N, K], penultimate features [N, D]) of `trained` in eval mode."""
  fn = jax.jit(lambda v, xb: trained.model.apply(v, to_input(xb), train=False))
  variables = trained.variables()
  return map_batches(lambda xb: fn(variables, xb), x, batch_size=batch_size)
