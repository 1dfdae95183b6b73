"""Helpers for passing functions through `jax.jit`."""
import jax


def as_partial(fn) -> jax.tree_util.Partial:
  """A jit-passable version of `fn`: a `Partial` is itself (its bound arrays are traced);
  a plain function becomes an argument-free `Partial` (compiled once per function object)."""
  return fn if isinstance(fn, jax.tree_util.Partial) else jax.tree_util.Partial(fn)
