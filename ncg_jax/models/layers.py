"""Layers shared by the model zoo."""
import jax.numpy as jnp


def max_pool_2x2(x_BxHxWxC: jnp.ndarray) -> jnp.ndarray:
  """2x2 max pooling with stride 2 (H and W even), written as reshape + max.

  `nn.max_pool` lowers to `reduce_window`, whose gradient is `select_and_scatter`,
  which XLA:CPU runs as a slow scalar loop; the reshape form differentiates into an
  elementwise compare-and-select and is several times faster on CPU (see
  benchmarks/cnn002.py). Same values and, away from ties, the same gradient.
  """
  b, h, w, c = x_BxHxWxC.shape
  x = x_BxHxWxC.reshape(b, h // 2, 2, w // 2, 2, c)
  return x.max(axis=(2, 4))
