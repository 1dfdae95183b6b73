"""MLP heads trained on frozen features: the paper's `LargeMLP` (3 x 256, ReLU)."""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
  num_classes: int
  widths: Sequence[int] = (256, 256, 256)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, h_BxD, train: bool = False):
    x = h_BxD.reshape(h_BxD.shape[0], -1).astype(self.dtype)
    for i, w in enumerate(self.widths):
      x = nn.relu(nn.Dense(w, name=f"fc{i + 1}", dtype=self.dtype)(x))
      self.sow("intermediates", f"fc{i + 1}", x)
    feats = self.perturb("features", x)
    self.sow("intermediates", "features", feats)
    logits = nn.Dense(self.num_classes, name="head", dtype=self.dtype)(feats)
    return logits.astype(jnp.float32), feats.astype(jnp.float32)
