"""Data parallelism over every device through `jax.sharding`: one 1-D mesh named "data",
batches split along their first axis, parameters and optimizer state replicated, plain
`jax.jit` (no pmap). Reductions over the batch, BatchNorm statistics included, are global,
unlike per-GPU BatchNorm under PyTorch DDP.
"""
import functools

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from ncg_jax.registry import ConfigError


@functools.lru_cache(maxsize=None)
def mesh() -> jax.sharding.Mesh:
  # Auto axes: shardings propagate through jit from the inputs (no explicit-mode types)
  return jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))


def count() -> int:
  return jax.device_count()


def replicate(tree):
  return jax.device_put(tree, NamedSharding(mesh(), P()))


def shard(*arrays: np.ndarray):
  """Puts each array on the mesh split along its first axis (which must divide evenly)."""
  s = NamedSharding(mesh(), P("data"))
  out = tuple(jax.device_put(a, s) for a in arrays)
  return out if len(out) > 1 else out[0]


def round_batch(batch_size: int) -> int:
  """The smallest multiple of the device count that is at least `batch_size`."""
  n = count()
  return -(-batch_size // n) * n


def check_batch(batch_size: int) -> None:
  if batch_size % count():
    raise ConfigError(f"batch size {batch_size} must be a multiple of the {count()} devices")
