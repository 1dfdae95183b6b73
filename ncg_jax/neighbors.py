"""Exact k-nearest-neighbour search under the L2 distance.

`nearest(database, queries, k)` returns (distances, indices), distances being true (not
squared) L2 distances, nearest first. Backends:
  faiss: `IndexFlatL2` (exact), on the GPUs when a GPU faiss build and a GPU are present;
  jax:   blocked `q @ db.T`, then per block `lax.top_k` (k = 1: a minimum and a first-index
         reduction, `_first_min`), running on whatever device JAX has (TPUs too).
Both recompute the returned distances directly as ||q - db[i]|| in float32, so the
distances agree across backends to float rounding. With several devices the JAX backend
splits the database's blocks over them (per-device top-k, gathered and merged), and faiss
shards its GPU index over all GPUs; queries go in chunks, so memory stays bounded.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ncg_jax.progress import Progress
from ncg_jax.registry import ConfigError

BACKENDS = ("auto", "faiss", "jax")


def _flat(a) -> np.ndarray:
  a = np.asarray(a, dtype=np.float32)
  return np.ascontiguousarray(a.reshape(a.shape[0], -1))


def faiss_available() -> bool:
  try:
    import faiss  # noqa: F401
    return True
  except ImportError:
    return False


def resolve_backend(backend: str) -> str:
  if backend not in BACKENDS:
    raise ConfigError(f"unknown nearest-neighbour backend '{backend}'; valid: {', '.join(BACKENDS)}")
  if backend == "auto":
    return "faiss" if faiss_available() and jax.default_backend() in ("cpu", "gpu") else "jax"
  return backend


def nearest(database, queries, k: int = 1, backend: str = "auto",
            query_block: int = 1024, db_block: int = 16384,
            columns: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Exact k-NN of each query row in `database` (rows flattened). Returns float32 distances
  [Q, k] and int64 indices [Q, k], nearest first. `columns` (neighbour ranks, 0-based):
  return only those columns, whose exact distances alone are recomputed (KNN's detector
  needs the k-th only; recomputing all k on the host costs Q k D)."""
  db, q = _flat(database), _flat(queries)
  if db.shape[1] != q.shape[1]:
    raise ValueError(f"database has dimension {db.shape[1]}, queries {q.shape[1]}")
  if not 1 <= k <= len(db):
    raise ValueError(f"k={k} must be between 1 and the database size {len(db)}")
  backend = resolve_backend(backend)
  if backend == "faiss":
    idx = _faiss_search(db, q, k)
  else:
    idx = _jax_search(db, q, k, query_block, min(db_block, len(db)))
  if columns is not None:
    idx = idx[:, list(columns)]
  return _distances(db, q, idx), idx.astype(np.int64)


def _distances(db: np.ndarray, q: np.ndarray, idx: np.ndarray, chunk: int = 1024) -> np.ndarray:
  out = np.empty(idx.shape, np.float32)
  for s in range(0, len(q), chunk):
    out[s:s + chunk] = np.linalg.norm(q[s:s + chunk, None, :] - db[idx[s:s + chunk]], axis=-1)
  return out


def _faiss_search(db: np.ndarray, q: np.ndarray, k: int, query_block: int = 65536) -> np.ndarray:
  import faiss
  index = faiss.IndexFlatL2(db.shape[1])
  if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
    options = faiss.GpuMultipleClonerOptions()
    options.shard = True  # split the database over the GPUs (the default replicates it)
    index = faiss.index_cpu_to_all_gpus(index, options)
  index.add(db)
  # queries in chunks: the [chunk, k] results are all that grows with the query count
  progress = Progress(f"{k}-NN search (faiss) in {len(db):,} x {db.shape[1]}", len(q), "queries")
  out = []
  for s in range(0, len(q), query_block):
    out.append(index.search(q[s:s + query_block], k)[1])
    progress.update(len(out[-1]))
  progress.close()
  return np.concatenate(out)


def _scan_topk(q_QxD, db_NxBxD, n_valid, offset0, k: int):
  """Scans database blocks (rows offset0...), keeping the running k smallest squared
  distances per query; rows at or past `n_valid` are padding and never selected."""
  q_sq = jnp.sum(q_QxD * q_QxD, axis=1, keepdims=True)
  block = db_NxBxD.shape[1]

  def body(carry, xs):
    best_d, best_i = carry
    db_BxD, offset = xs
    db_sq = jnp.where(offset + jnp.arange(block) < n_valid, jnp.sum(db_BxD * db_BxD, axis=1), jnp.inf)
    d = q_sq - 2.0 * jnp.dot(q_QxD, db_BxD.T, precision=lax.Precision.HIGHEST) + db_sq[None]
    if k == 1:
      m, i = _first_min(d)
      better = m < best_d  # on a tie the earlier block's (lower) index stays
      return (jnp.where(better, m, best_d), jnp.where(better, i + offset, best_i)), None
    neg, i = lax.top_k(-d, k)
    return _merge(best_d, best_i, -neg, i + offset, k), None

  init = (jnp.full((q_QxD.shape[0], k), jnp.inf, q_QxD.dtype),
          jnp.zeros((q_QxD.shape[0], k), jnp.int32))
  offsets = offset0 + jnp.arange(db_NxBxD.shape[0], dtype=jnp.int32) * block
  (d, idx), _ = lax.scan(body, init, (db_NxBxD, offsets))
  return d, idx


def _first_min(d_QxB):
  """Each row's smallest value and the lowest index holding it, the choice of
  `lax.top_k(-d, 1)`, as two plain float reductions: the minimum, then the minimum of
  index + 2^24 [d != min] (indices as float32, exact below 2^24). On XLA:CPU `top_k` and
  `argmin` over a row run as scalar loops, and an integer select-and-min is no faster
  (31, 29 and 42 ms for a 1,000 x 12,504 block) where these two reductions take 9.5 ms
  (`benchmarks/RESULTS.md`). NaN counts as +inf here: a NaN distance is never nearest."""
  if d_QxB.shape[1] >= 1 << 24:
    raise ValueError(f"database block of {d_QxB.shape[1]} rows: at most 2^24 - 1")
  d = jnp.where(jnp.isnan(d_QxB), jnp.inf, d_QxB)
  m = jnp.min(d, axis=1, keepdims=True)
  index = lax.broadcasted_iota(jnp.float32, d.shape, 1)
  i = jnp.min(index + (d != m).astype(jnp.float32) * float(1 << 24), axis=1, keepdims=True)
  return m, i.astype(jnp.int32)


def _merge(d1, i1, d2, i2, k):
  all_d, all_i = jnp.concatenate([d1, d2], axis=1), jnp.concatenate([i1, i2], axis=1)
  neg, sel = lax.top_k(-all_d, k)
  return -neg, jnp.take_along_axis(all_i, sel, axis=1)


@functools.partial(jax.jit, static_argnames=("k",))
def _block_topk(q_QxD, db_NxBxD, n_valid, k: int):
  return _scan_topk(q_QxD, db_NxBxD, n_valid, 0, k)[1]


@functools.lru_cache(maxsize=None)
def _sharded_topk_fn(mesh, k: int):
  """The database's blocks are split over the mesh; each device scans its own, then the
  per-device top-k are gathered and merged (queries replicated)."""
  spec = jax.sharding.PartitionSpec

  def local(q, db_local, n_valid):
    per_device = db_local.shape[0] * db_local.shape[1]
    d, i = _scan_topk(q, db_local, n_valid, lax.axis_index("data") * per_device, k)
    all_d = lax.all_gather(d, "data", axis=1, tiled=True)
    all_i = lax.all_gather(i, "data", axis=1, tiled=True)
    return _merge(all_d[:, :k], all_i[:, :k], all_d[:, k:], all_i[:, k:], k)[1]

  return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(spec(), spec("data"), spec()),
                               out_specs=spec(), check_vma=False))


def _balanced(n: int, max_block: int, multiple: int = 1) -> tuple[int, int]:
  """(number of blocks, block size) covering n rows with blocks of at most max_block rows
  and the least padding (block size rounded up to a multiple of 8); the number of blocks is
  a multiple of `multiple` (one share per device)."""
  n_blocks = -(-n // max_block)
  n_blocks = -(-n_blocks // multiple) * multiple
  block = -(-n // n_blocks)
  return n_blocks, -(-block // 8) * 8


def _pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
  return a if len(a) == rows else np.concatenate([a, np.zeros((rows - len(a), a.shape[1]), a.dtype)])


@functools.partial(jax.jit, donate_argnums=0)
def _set_block(db_NxBxD, block_BxD, i):
  return lax.dynamic_update_index_in_dim(db_NxBxD, block_BxD, i, 0)


def _to_device_blocks(db: np.ndarray, n_blocks: int, block: int) -> jax.Array:
  """The database as [n_blocks, block, D] on the default device, zero-padded, copied one
  block at a time into a buffer updated in place: device and host memory then hold the
  database once plus one block. (Placing the whole padded array at once needs a padded
  host copy, and the transfer staged a second full copy on an H100: 19.5 GiB of device
  memory for a 9.8 GiB database.)"""
  out = jnp.zeros((n_blocks, block, db.shape[1]), db.dtype)
  for i in range(n_blocks):
    out = _set_block(out, _pad_rows(db[i * block:(i + 1) * block], block), i)
  return out


def _jax_search(db: np.ndarray, q: np.ndarray, k: int, query_block: int,
                db_block: int) -> np.ndarray:
  from ncg_jax import sharding
  n, d = db.shape
  n_dev = sharding.count()
  n_blocks, db_block = _balanced(n, db_block, multiple=n_dev)
  if n_dev > 1:
    db_j = _pad_rows(db, n_blocks * db_block).reshape(n_blocks, db_block, d)
    db_j = sharding.shard(sharding.local(db_j))  # each process holds its devices' blocks
    search = _sharded_topk_fn(sharding.mesh(), k)
    put = sharding.replicate
  else:
    db_j = _to_device_blocks(db, n_blocks, db_block)
    search = functools.partial(_block_topk, k=k)
    put = jnp.asarray
  _, query_block = _balanced(len(q), query_block)
  out = np.empty((len(q), k), np.int64)
  progress = Progress(f"{k}-NN search in {n:,} x {d}", len(q), "queries")
  for s in range(0, len(q), query_block):
    chunk = q[s:s + query_block]
    # every call has one shape (one compilation): the last chunk is padded
    idx = search(put(_pad_rows(chunk, query_block)), db_j, n)
    out[s:s + len(chunk)] = sharding.to_host(idx)[:len(chunk)]
    progress.update(len(chunk))
  progress.close()
  return out
