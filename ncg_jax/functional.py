"""Helpers for the functions users pass in: through `jax.jit` (`as_partial`), and in
cache-sized row chunks on the CPU (`in_row_chunks`)."""
import jax


def as_partial(fn) -> jax.tree_util.Partial:
  """A jit-passable version of `fn`: a `Partial` is itself (its bound arrays are traced);
  a plain function becomes an argument-free `Partial` (compiled once per function object)."""
  return fn if isinstance(fn, jax.tree_util.Partial) else jax.tree_util.Partial(fn)


def in_row_chunks(fn, rows: int = 64):
  """On the CPU backend, `fn` (batch in, batch out along the first axis, rows independent)
  applied to chunks of `rows` rows in a `lax.map` where the batch is a larger multiple of
  `rows`; elsewhere, and for other batch sizes, `fn` itself. Its gradient then runs chunk by
  chunk too.

  Why: on XLA:CPU an input gradient of CNN002 took 93 ms at batch 256 but 56 ms as four
  chunks of 64 (the 2-core VM of `benchmarks/RESULTS.md`; 28 ms at batch 128): at 256 rows
  the backward pass's working set no longer fits the caches. Per row the arithmetic stayed
  the same there (gradients bitwise equal at 64 and 256 rows; not at 32, where XLA:CPU's
  convolution blocks differently). A GPU wants the whole batch at once and gets `fn`
  unchanged. For row-independent functions only (no BatchNorm in training mode). Inside the
  loop a convolution's kernel is a loop constant: give user networks
  `models.layers.as_ncg_jax_layers` first, or their convolution gradients get slow."""
  def chunked(x):
    b = x.shape[0]
    if jax.default_backend() != "cpu" or b <= rows or b % rows:
      return fn(x)
    out = jax.lax.map(fn, x.reshape((b // rows, rows) + x.shape[1:]))
    return jax.tree.map(lambda o: o.reshape((b,) + o.shape[2:]), out)
  return chunked
