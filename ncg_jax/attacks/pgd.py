"""Projected gradient ascent in an L2 or Linf ball (Madry et al. 2018), and PGD on CE.

`ascend` is the shared core: TRADES's inner maximisation (the `trades<beta>` loss) and
`pgd` differ only in the objective and the starting point.
"""
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax import lax

from ncg_jax.functional import rowwise_value_and_grad
from ncg_jax.models.layers import as_ncg_jax_layers

NORMS = ("l2", "linf")
_TINY = 1e-12


def _per_example_norm(v: jnp.ndarray) -> jnp.ndarray:
  return jnp.sqrt(jnp.sum(v * v, axis=tuple(range(1, v.ndim)), keepdims=True) + _TINY)


def project(delta: jnp.ndarray, eps, norm: str) -> jnp.ndarray:
  """Per-example projection of `delta` onto the eps-ball of `norm`."""
  if norm == "linf":
    return jnp.clip(delta, -eps, eps)
  if norm == "l2":
    return delta * jnp.minimum(1.0, eps / _per_example_norm(delta))
  raise ValueError(f"unknown norm '{norm}'; valid: {', '.join(NORMS)}")


def steepest_step(g: jnp.ndarray, norm: str) -> jnp.ndarray:
  """The unit-norm ascent direction for `g`: sign (Linf) or g/||g|| per example (L2)."""
  return jnp.sign(g) if norm == "linf" else g / _per_example_norm(g)


def _clip(x, clip):
  return x if clip is None else jnp.clip(x, clip[0], clip[1])


def ascend(objective: Callable[..., jnp.ndarray], x: jnp.ndarray,
           x_start: jnp.ndarray, *, eps, norm: str, steps: int, step_size,
           clip: tuple[float, float] | None = (0.0, 1.0),
           key: jax.Array | None = None, rows: tuple | None = None) -> jnp.ndarray:
  """`steps` ascent steps on sum(objective(x_adv)) (objective: per-example values). Each
  step is the steepest-ascent step, then clipping to the box `clip`, then projection onto
  the eps-ball around `x` (then clipping again, a no-op for these convex sets but exact in
  float): the order of TRADES (`trades.py`: step, clamp, renorm) and of the NCG paper's PGD
  (step, clip, project, clip). Clipping first drops the part of a step that points out of
  the box (MNIST's black background) before the projection, so it spends no budget;
  projecting first would waste it and weaken the attack.

  With `key` (TRADES), an example whose L2 gradient is exactly zero steps along a random
  N(0, I) direction, as TRADES replaces a zero gradient by `randn_like` (unnormalised; the
  clip and projection then bound the step); without it (the paper's PGD) it does not move.
  Examples are independent as long as `objective` is (an eval-mode model).

  `rows`: the per-example arrays the objective reads (labels, clean predictions), passed to
  it as `objective(x_adv, *rows)` instead of closed over; the gradients then run in chunks of
  64 rows on the CPU (`functional.rowwise_value_and_grad`; bitwise the same for CNN002: one
  input gradient at batch 256 took 87-90 ms against 114-120 ms, inside an attack's loop the
  gain is a few percent). With `rows=None` the objective is `objective(x_adv)` and the batch
  is differentiated whole."""
  if rows is None:
    grad = jax.grad(lambda xa: jnp.sum(objective(xa)))
  else:
    value_and_grad = rowwise_value_and_grad(lambda xa, *r: (objective(xa, *r), ()))
    grad = lambda xa: value_and_grad(xa, *rows)[1]
  axes = tuple(range(1, x.ndim))

  def body(i, x_adv):
    g = grad(x_adv)
    d = steepest_step(g, norm)
    if key is not None and norm == "l2":
      # drawn only in the steps that need it: N(0, I) for a CNN002 batch of 128 costs ~4 ms
      # on the 2-core VM; drawn at each of the 10 ascent steps it cost 3-7% of a TRADES step
      zero = jnp.sum(g * g, axis=axes, keepdims=True) == 0
      d = lax.cond(jnp.any(zero), lambda: jnp.where(
          zero, jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype), d), lambda: d)
    x_adv = _clip(x_adv + step_size * d, clip)
    return _clip(x + project(x_adv - x, eps, norm), clip)

  return lax.fori_loop(0, steps, body, x_start)


def random_start(key: jax.Array, x: jnp.ndarray, eps, norm: str, clip=(0.0, 1.0)) -> jnp.ndarray:
  """Uniform in the Linf box of radius eps, projected onto the ball (for L2 this lands on or
  near the sphere, as the NCG paper's code), then clipped."""
  delta = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0) * eps
  return _clip(x + project(delta, eps, norm), clip)


def pgd(logits_fn: Callable, x: jnp.ndarray, y: jnp.ndarray, *, eps, norm: str, steps: int,
        step_size, key: jax.Array | None = None,
        clip: tuple[float, float] | None = (0.0, 1.0)) -> jnp.ndarray:
  """Untargeted PGD maximising the cross-entropy of the true labels `y`; random start when
  `key` is given. Returns x_adv with ||x_adv - x|| <= eps per example, inside `clip`.
  `logits_fn` is differentiated through `models.layers.as_ncg_jax_layers` (a plain Flax
  network's max-pools and convolutions in the forms whose gradients are fast on XLA:CPU)."""
  x_start = x if key is None else random_start(key, x, eps, norm, clip)
  logits_fn = as_ncg_jax_layers(logits_fn)
  ce = lambda xa, yy: optax.softmax_cross_entropy_with_integer_labels(logits_fn(xa), yy)
  return ascend(ce, x, x_start, eps=eps, norm=norm, steps=steps, step_size=step_size,
                clip=clip, rows=(y,))
