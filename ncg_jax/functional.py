"""Helpers for the functions users pass in: through `jax.jit` (`as_partial`), and with
their tiling max-pools in a form whose gradient is fast on XLA:CPU (`pools_as_reshapes`)."""
import jax


def as_partial(fn) -> jax.tree_util.Partial:
  """A jit-passable version of `fn`: a `Partial` is itself (its bound arrays are traced);
  a plain function becomes an argument-free `Partial` (compiled once per function object)."""
  return fn if isinstance(fn, jax.tree_util.Partial) else jax.tree_util.Partial(fn)


def _pool_by_reshape(x, window, strides, padding, base_dilation, window_dilation):
  """reduce_window max as slice + reshape + max where windows tile the input (window =
  stride, no padding or dilation); None where they do not."""
  if (tuple(window) != tuple(strides) or any(p != (0, 0) for p in padding)
      or any(d != 1 for d in (*base_dilation, *window_dilation))):
    return None
  keep = tuple(slice(0, n - n % k) for n, k in zip(x.shape, window))
  x = x[keep]
  split, axes = [], []
  for n, k in zip(x.shape, window):
    if k > 1:
      axes.append(len(split) + 1)
      split += [n // k, k]
    else:
      split.append(n)
  return x.reshape(split).max(axis=tuple(axes))


def _eval_rewritten(jaxpr, consts, *args):
  from jax.extend.core import Literal
  env = {}
  read = lambda v: v.val if isinstance(v, Literal) else env[v]
  env.update(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    name, out = eqn.primitive.name, None
    if name == "reduce_window_max":
      p = eqn.params
      out = _pool_by_reshape(invals[0], p["window_dimensions"], p["window_strides"],
                             p["padding"], p["base_dilation"], p["window_dilation"])
    elif name in ("jit", "pjit"):
      inner = eqn.params["jaxpr"]
      out = _eval_rewritten(inner.jaxpr, inner.consts, *invals)
    if out is None:
      params = eqn.primitive.get_bind_params(eqn.params)  # (subfuns, params) before jax 0.7
      subfuns, params = params if isinstance(params, tuple) else ((), params)
      out = eqn.primitive.bind(*subfuns, *invals, **params)
    env.update(zip(eqn.outvars, out if eqn.primitive.multiple_results else [out]))
  return [read(v) for v in jaxpr.outvars]


def pools_as_reshapes(fn):
  """`fn` with every max pooling whose windows tile its input (`nn.max_pool(x, (2, 2),
  (2, 2))`, window = stride, no padding) computed as reshape + max; other operations as
  they are, nested `jax.jit` calls inlined. Same values. The gradient differs only at
  exact ties inside a window, which XLA's pooling gradient gives to one element and the
  reshape form shares equally; ReLU-then-pool zeros carry no gradient either way.

  Why: XLA differentiates `reduce_window` max into `select_and_scatter`, which XLA:CPU runs
  as a scalar loop (~60 of ~190 ms of ODIN through a plain Flax CNN002 at batch 256); the
  reshape form differentiates into an elementwise select (`ncg_jax.models.layers.max_pool_2x2`
  is the same form inside ncg_jax's own models). For user functions passed to detectors."""
  def rewritten(*args):
    closed, shapes = jax.make_jaxpr(fn, return_shape=True)(*args)
    out = _eval_rewritten(closed.jaxpr, closed.consts, *jax.tree.leaves(args))
    return jax.tree.unflatten(jax.tree.structure(shapes), out)
  return rewritten
