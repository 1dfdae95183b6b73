"""Exact k-nearest-neighbour search under the L2 distance.

`nearest(database, queries, k)` returns (distances, indices), distances being true (not
squared) L2 distances, nearest first. Backends:
  faiss: `IndexFlatL2` (exact), on the GPUs when a GPU faiss build and a GPU are present;
  jax:   blocked `q @ db.T` + `lax.top_k`, running on whatever device JAX has (TPUs too).
Both recompute the returned distances directly as ||q - db[i]|| in float32, so the
distances agree across backends to float rounding.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

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
            query_block: int = 1024, db_block: int = 16384) -> tuple[np.ndarray, np.ndarray]:
  """Exact k-NN of each query row in `database` (rows flattened). Returns float32 distances
  [Q, k] and int64 indices [Q, k], nearest first."""
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
  return _distances(db, q, idx), idx.astype(np.int64)


def _distances(db: np.ndarray, q: np.ndarray, idx: np.ndarray, chunk: int = 1024) -> np.ndarray:
  out = np.empty(idx.shape, np.float32)
  for s in range(0, len(q), chunk):
    out[s:s + chunk] = np.linalg.norm(q[s:s + chunk, None, :] - db[idx[s:s + chunk]], axis=-1)
  return out


def _faiss_search(db: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
  import faiss
  index = faiss.IndexFlatL2(db.shape[1])
  if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
    index = faiss.index_cpu_to_all_gpus(index)
  index.add(db)
  _, idx = index.search(q, k)
  return idx


@functools.partial(jax.jit, static_argnames=("k",))
def _block_topk(q_QxD, db_NxBxD, n_valid, k: int):
  """Scans database blocks, keeping the running k smallest squared distances per query.
  Rows at or past `n_valid` are padding and never selected."""
  q_sq = jnp.sum(q_QxD * q_QxD, axis=1, keepdims=True)
  block = db_NxBxD.shape[1]

  def body(carry, xs):
    best_d, best_i = carry
    db_BxD, offset = xs
    db_sq = jnp.where(offset + jnp.arange(block) < n_valid, jnp.sum(db_BxD * db_BxD, axis=1), jnp.inf)
    d = q_sq - 2.0 * jnp.dot(q_QxD, db_BxD.T, precision=lax.Precision.HIGHEST) + db_sq
    neg, i = lax.top_k(-d, k)
    all_d = jnp.concatenate([best_d, -neg], axis=1)
    all_i = jnp.concatenate([best_i, i + offset], axis=1)
    neg, sel = lax.top_k(-all_d, k)
    return (-neg, jnp.take_along_axis(all_i, sel, axis=1)), None

  init = (jnp.full((q_QxD.shape[0], k), jnp.inf, q_QxD.dtype),
          jnp.zeros((q_QxD.shape[0], k), jnp.int32))
  offsets = jnp.arange(db_NxBxD.shape[0], dtype=jnp.int32) * block
  (_, idx), _ = lax.scan(body, init, (db_NxBxD, offsets))
  return idx


def _balanced(n: int, max_block: int) -> tuple[int, int]:
  """(number of blocks, block size) covering n rows with blocks of at most max_block rows
  and the least padding (block size rounded up to a multiple of 8)."""
  n_blocks = -(-n // max_block)
  block = -(-n // n_blocks)
  return n_blocks, -(-block // 8) * 8


def _pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
  return a if len(a) == rows else np.concatenate([a, np.zeros((rows - len(a), a.shape[1]), a.dtype)])


def _jax_search(db: np.ndarray, q: np.ndarray, k: int, query_block: int,
                db_block: int) -> np.ndarray:
  n, d = db.shape
  n_blocks, db_block = _balanced(n, db_block)
  db_j = jnp.asarray(_pad_rows(db, n_blocks * db_block).reshape(n_blocks, db_block, d))
  _, query_block = _balanced(len(q), query_block)
  out = np.empty((len(q), k), np.int64)
  for s in range(0, len(q), query_block):
    chunk = q[s:s + query_block]
    # every call has one shape (one compilation): the last chunk is padded
    idx = _block_topk(jnp.asarray(_pad_rows(chunk, query_block)), db_j, n, k)
    out[s:s + len(chunk)] = np.asarray(idx)[:len(chunk)]
  return out
