"""Helpers for the functions users pass in: through `jax.jit` (`as_partial`), and in
cache-sized row chunks on the CPU (`in_row_chunks`, and for input gradients
`rowwise_value_and_grad`)."""
import contextvars

import jax
import jax.numpy as jnp

_INPUT_GRADIENT = contextvars.ContextVar("ncg_jax_input_gradient", default=False)


def traces_input_gradient() -> bool:
  """True while `rowwise_value_and_grad` traces its function: a gradient with respect to the
  input alone, whatever the function closes over. Layers may then trace a backward pass
  suited to that program (`models.layers.max_pool_2x2`) with the same values and gradients,
  so a jitted function traced outside this context and called inside it (or the reverse)
  keeps its first trace and stays correct."""
  return _INPUT_GRADIENT.get()


def as_partial(fn) -> jax.tree_util.Partial:
  """A jit-passable version of `fn`: a `Partial` is itself (its bound arrays are traced);
  a plain function becomes an argument-free `Partial` (compiled once per function object)."""
  return fn if isinstance(fn, jax.tree_util.Partial) else jax.tree_util.Partial(fn)


def in_row_chunks(fn, rows: int = 64):
  """On the CPU backend, `fn(*args)` (every argument an array or pytree of arrays with one
  row per example along the first axis; results likewise; rows independent) applied to
  chunks of `rows` rows in a `lax.map` where the batch is a larger multiple of `rows`;
  elsewhere, and for other batch sizes, `fn` itself.

  Why: on XLA:CPU an input gradient of CNN002 took 93 ms at batch 256 but 56 ms as four
  chunks of 64 (the 2-core VM of `benchmarks/RESULTS.md`; 28 ms at batch 128): at 256 rows
  the backward pass's working set no longer fits the caches. Per row the arithmetic stayed
  the same there (gradients bitwise equal at 64 and 256 rows; not at 32, where XLA:CPU's
  dense-layer products round differently; its convolutions give the same bits at 32 rows).
  A GPU wants the whole batch at once and gets `fn` unchanged. For row-independent
  functions only (no BatchNorm in training mode). Inside the loop a convolution's kernel is
  a loop constant: give user networks `models.layers.as_ncg_jax_layers` first, or their
  convolution gradients get slow. For gradients use `rowwise_value_and_grad`, which chunks
  the gradient itself."""
  def chunked(*args):
    b = jax.tree.leaves(args)[0].shape[0]
    if jax.default_backend() != "cpu" or b <= rows or b % rows:
      return fn(*args)
    split = jax.tree.map(lambda a: a.reshape((b // rows, rows) + a.shape[1:]), args)
    out = jax.lax.map(lambda a: fn(*a), split)
    return jax.tree.map(lambda o: o.reshape((b,) + o.shape[2:]), out)
  return chunked


def rowwise_value_and_grad(fn, rows: int = 64):
  """For `fn(x, *row_args) -> (values [B], aux)` whose rows are independent (an eval-mode
  network; `row_args` and `aux`: one row per example), a function of the same arguments
  returning ((values, aux), d sum(values) / dx), on the CPU in chunks of `rows` rows
  (`in_row_chunks`), each chunk's forward and VJP together.

  Chunking the gradient rather than the forward matters: differentiating `in_row_chunks(f)`
  runs every chunk's forward first and stacks their activations for a second, backward loop
  (ODIN's perturbation through CNN002 at batch 512: 3.8-4.2x a forward that way, 3.2-3.5x
  this way, three interleaved runs; same values).
  What the attacks and input-perturbing detectors differentiate goes through here."""
  def one(x, *args):
    def total(xx):
      values, aux = fn(xx, *args)
      return jnp.sum(values), (values, aux)
    token = _INPUT_GRADIENT.set(True)
    try:
      (_, out), g = jax.value_and_grad(total, has_aux=True)(x)
    finally:
      _INPUT_GRADIENT.reset(token)
    return out, g
  return in_row_chunks(one, rows)
