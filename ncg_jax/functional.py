"""Helpers for the functions users pass in: through `jax.jit` (`as_partial`), and in
cache-sized row chunks on the CPU (`in_row_chunks`, and for input gradients
`rowwise_value_and_grad`)."""
import contextvars
import functools
import importlib.metadata
import sys
import weakref

import jax
import jax.numpy as jnp
import numpy as np

_INPUT_GRADIENT = contextvars.ContextVar("ncg_jax_input_gradient", default=False)
_SIGN_ONLY = contextvars.ContextVar("ncg_jax_sign_only", default=False)


def traces_input_gradient() -> bool:
  """True while `rowwise_value_and_grad` traces its function: a gradient with respect to the
  input alone, whatever the function closes over. Layers may then trace a backward pass
  suited to that program (`models.layers.max_pool_2x2`) with the same values and gradients,
  so a jitted function traced outside this context and called inside it (or the reverse)
  keeps its first trace and stays correct."""
  return _INPUT_GRADIENT.get()


def traces_sign_only_gradient() -> bool:
  """True while `rowwise_value_and_grad(..., sign_only=True)` traces its function: the caller
  reads only the sign of each gradient element, once (ODIN, Mahalanobis preprocessing), so
  layers may sum the gradient in another order (`models.layers.conv2d_for_backend`). Never
  set for the attacks, whose steps feed back into the next gradient and into training. As
  with `traces_input_gradient`, an ncg_jax model's apply that the user wrapped in `jax.jit`
  keeps the form of its first trace (checked with `make_jaxpr`): traced first by ODIN and
  then attacked, its attack gradient is the sign-only form's (equal up to float rounding).
  `Trained.logits_fn()` and plain Flax or `lax` networks, jitted or not
  (`as_ncg_jax_layers` rewrites their convolutions at each trace), are traced afresh in each
  mode."""
  return _SIGN_ONLY.get()


def as_partial(fn) -> jax.tree_util.Partial:
  """A jit-passable version of `fn`: a `Partial` is itself (its bound arrays are traced);
  a plain function becomes an argument-free `Partial` (compiled once per function object),
  and the arrays it reads from its closure or globals are compiled into the program as
  constants. On the CPU with an affected jaxlib, a function holding 1 MiB or more of such
  arrays gets a one-line notice on stderr (once per function; `constants_notice`)."""
  if isinstance(fn, jax.tree_util.Partial):
    return fn
  constants_notice(fn)
  return jax.tree_util.Partial(fn)


# jaxlib versions whose XLA:CPU corrupts its heap running some networks compiled with their
# weights as constants (YNNPACK, `constants_notice`); 0.10.2 measured here
_CONSTANT_CRASH_JAXLIB = ("0.10.2",)
_NOTICE_BYTES = 1 << 20
_CHECKED = weakref.WeakSet()


@functools.cache
def _jaxlib_version() -> str:
  try:
    return importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return ""


def closed_over_bytes(fn, depth: int = 2) -> int:
  """Bytes of the numpy/JAX arrays `fn` reads without taking them as arguments: from its
  closure cells, the globals its code names, a `functools.partial`'s bound arguments and a
  bound method's object, following functions found there `depth` levels down. What `jax.jit`
  of `fn` would compile in as constants (arrays reached through other objects are missed)."""
  if isinstance(fn, functools.partial):
    values, inner = [fn.args, fn.keywords], [fn.func]
  else:
    code = getattr(fn, "__code__", None)
    values, inner = [], []
    if code is not None:
      values += [c.cell_contents for c in (fn.__closure__ or ()) if _filled(c)]
      glb = getattr(fn, "__globals__", {})
      values += [glb[n] for n in code.co_names if n in glb]
    if hasattr(fn, "__self__"):
      values.append(fn.__self__)
    if hasattr(fn, "__func__"):
      inner.append(fn.__func__)
  total = 0
  for leaf in jax.tree.leaves(values):
    if isinstance(leaf, (np.ndarray, jax.Array)):
      total += leaf.nbytes
    elif callable(leaf) and depth > 0 and not isinstance(leaf, type):
      inner.append(leaf)
  return total + sum(closed_over_bytes(f, depth - 1) for f in inner if depth > 0)


def _filled(cell) -> bool:
  try:
    cell.cell_contents
  except ValueError:
    return False
  return True


def constants_notice(fn) -> bool:
  """Says on stderr, once per function object, that `fn` holds 1 MiB or more of arrays that
  jit compiles in as constants, when the backend is the CPU and jaxlib is an affected version.

  Why: with jaxlib 0.10.2, XLA:CPU runs such a program of some networks in a YNNPACK fusion
  that corrupts the heap (glibc aborts with "malloc assertion failure" or "double free", or
  the process segfaults; the native backtrace is in YNNPACK's `make_dot_impl`). Measured on
  the 2-core VM with wrn_16_4 at batch 64 (`benchmarks/RESULTS.md`): ODIN through
  `lambda x: model.apply(variables, x)` crashed 5 of 5 processes, the forward jitted with its
  variables closed over 5 of 7; with the variables passed as arguments (a `Partial`, as
  `Trained.logits_fn()` does) 0 of 12; CNN002, ResNet-18 and DenseNet-BC-40-12 did not crash.
  Same class as the YNN crashes reported upstream for 0.10.2 (jax-ml/jax#39257, #40412).
  Each function object is looked at once (ODIN and the attacks call this per batch).
  Returns whether it printed."""
  if _jaxlib_version() not in _CONSTANT_CRASH_JAXLIB or jax.default_backend() != "cpu":
    return False
  key = getattr(fn, "__func__", fn)  # a bound method is a new object at every access
  try:
    if key in _CHECKED:
      return False
    _CHECKED.add(key)
  except TypeError:  # neither hashable nor weakly referable: looked at every time
    pass
  n = closed_over_bytes(fn)
  if n < _NOTICE_BYTES:
    return False
  name = getattr(fn, "__qualname__", type(fn).__name__)
  print(f"ncg_jax: {name} reads {n / 2**20:.1f} MiB of arrays that jit compiles in as "
        f"constants; with jaxlib {_jaxlib_version()} XLA:CPU can crash running such programs "
        "(a YNNPACK bug, seen with WideResNets): pass them as arguments, "
        "jax.tree_util.Partial(f, variables) with f(variables, x)", file=sys.stderr)
  return True


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


def rowwise_value_and_grad(fn, rows: int = 64, sign_only: bool = False):
  """For `fn(x, *row_args) -> (values [B], aux)` whose rows are independent (an eval-mode
  network; `row_args` and `aux`: one row per example), a function of the same arguments
  returning ((values, aux), d sum(values) / dx), on the CPU in chunks of `rows` rows
  (`in_row_chunks`), each chunk's forward and VJP together. `sign_only`: the caller uses
  only the sign of each gradient element, once, and lets layers round the gradient
  differently (`traces_sign_only_gradient`).

  Chunking the gradient rather than the forward matters: differentiating `in_row_chunks(f)`
  runs every chunk's forward first and stacks their activations for a second, backward loop
  (ODIN's perturbation through CNN002 at batch 512: 3.8-4.2x a forward that way, 3.2-3.5x
  this way, three interleaved runs; same values).
  What the attacks and input-perturbing detectors differentiate goes through here."""
  def one(x, *args):
    def total(xx):
      values, aux = fn(xx, *args)
      return jnp.sum(values), (values, aux)
    token, sign_token = _INPUT_GRADIENT.set(True), _SIGN_ONLY.set(sign_only)
    try:
      (_, out), g = jax.value_and_grad(total, has_aux=True)(x)
    finally:
      _SIGN_ONLY.reset(sign_token)
      _INPUT_GRADIENT.reset(token)
    return out, g
  return in_row_chunks(one, rows)
