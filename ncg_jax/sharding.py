"""Data parallelism over every device of every process through `jax.sharding`: one 1-D
mesh named "data", batches split along their first axis, parameters and optimizer state
replicated, plain `jax.jit` (no pmap). Reductions over the batch, BatchNorm statistics
included, are global, unlike per-GPU BatchNorm under PyTorch DDP.

Every process computes the same global batch plan (it depends only on seed and epoch);
`local(idx)` is the part of a global batch this process feeds (its devices' rows), and
`shard` assembles the global array from each process's rows. With one process these are
the whole batch and a `device_put`.
"""
import functools
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from ncg_jax.registry import ConfigError


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """`jax.distributed.initialize` (arguments auto-detected on TPU, SLURM and Open MPI when
  left None), with gloo collectives so that CPU processes can run together."""
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


@functools.lru_cache(maxsize=None)
def mesh() -> jax.sharding.Mesh:
  # Auto axes: shardings propagate through jit from the inputs (no explicit-mode types)
  return jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))


def count() -> int:
  return jax.device_count()


def is_writer() -> bool:
  """Only process 0 writes result files."""
  return jax.process_index() == 0


def write_file(path: str, write) -> None:
  """The one gate for result files: on process 0 only, `write(f)` fills a temporary file
  beside `path` (opened in binary mode), which then replaces `path` at once, so a run killed
  mid-write never leaves a truncated file."""
  if not is_writer():
    return
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      write(f)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(path: str, text: str) -> None:
  write_file(path, lambda f: f.write(text.encode()))


def replicate(tree):
  s = NamedSharding(mesh(), P())
  return jax.tree.map(lambda a: jax.make_array_from_process_local_data(s, np.asarray(a)), tree)


def local(idx: np.ndarray) -> np.ndarray:
  """This process's rows of a global batch (contiguous, in mesh order)."""
  n = jax.process_count()
  return idx if n == 1 else np.split(idx, n)[jax.process_index()]


def shard(*local_arrays: np.ndarray):
  """Global arrays split along the first axis, from this process's rows (`local`)."""
  s = NamedSharding(mesh(), P("data"))
  out = tuple(jax.make_array_from_process_local_data(s, np.asarray(a)) for a in local_arrays)
  return out if len(out) > 1 else out[0]


def to_host(tree):
  """Global arrays -> numpy on every process (gathered across processes when needed)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return jax.tree.map(lambda a: np.asarray(a) if a.is_fully_replicated
                      else multihost_utils.process_allgather(a, tiled=True), tree)


def round_batch(batch_size: int) -> int:
  """The smallest multiple of the device count that is at least `batch_size`."""
  n = count()
  return -(-batch_size // n) * n


def check_batch(batch_size: int) -> None:
  if batch_size % count():
    raise ConfigError(f"batch size {batch_size} must be a multiple of the {count()} devices")
