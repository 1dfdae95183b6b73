"""APGD-CE and APGD-DLR (Croce & Hein, ICML 2020), the two untargeted attacks AutoAttack starts
with, as one jit-compiled `lax.fori_loop` per restart; and `robust_accuracy`, PGD with
restarts plus both APGD attacks.

Schedule as the authors' `autoattack/autopgd_base.py` (`attack_single_run`, `perturb`):
- start on the eps-sphere: x + eps * t / ||t|| (L2: t ~ N(0, I); Linf: t ~ U(-1, 1), scaled
  by its largest entry), clipped to the box;
- step size 2 eps per example; each step z = P(x_k + eta * s(grad)) (s: sign for Linf, g/||g||
  for L2; P: projection onto the ball around x, then the box), then the momentum step
  x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1})) with a = 1 at the first step and
  0.75 after;
- checkpoints: the first after k = max(int(0.22 N), 1) iterations, each next after k =
  max(k - max(int(0.03 N), 1), max(int(0.06 N), 1)) more; at a checkpoint an example's step
  size halves, and it restarts from its best point (and that point's gradient), if the loss
  rose in at most rho = 0.75 of the last k steps, or if its step size was not halved at the
  last checkpoint and its best loss did not improve since (the oscillation test compares
  the first step with a zero row, as the original's negative index does);
- an example counts as broken once any iterate is misclassified; restarts attack only the
  examples still unbroken (here every example is attacked with fixed shapes and only the
  unbroken ones are updated).
The DLR loss is -(z_y - max_{i != y} z_i) / (z_(1) - z_(3) + 1e-12) (z sorted, descending);
it needs at least 3 classes.
"""
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ncg_jax.attacks.pgd import pgd
from ncg_jax.batching import map_batches
from ncg_jax.functional import as_partial, rowwise_value_and_grad
from ncg_jax.models.layers import as_ncg_jax_layers
from ncg_jax.models.trained import to_input

LOSSES = ("ce", "dlr")


def dlr_loss(logits_BxK: jnp.ndarray, y_B: jnp.ndarray) -> jnp.ndarray:
  z = jnp.sort(logits_BxK, axis=-1)
  z_y = jnp.take_along_axis(logits_BxK, y_B[:, None], axis=-1)[:, 0]
  top_is_y = jnp.argmax(logits_BxK, axis=-1) == y_B
  other = jnp.where(top_is_y, z[:, -2], z[:, -1])
  return -(z_y - other) / (z[:, -1] - z[:, -3] + 1e-12)


def _ce(logits_BxK, y_B):
  return -jnp.take_along_axis(jax.nn.log_softmax(logits_BxK), y_B[:, None], axis=-1)[:, 0]


def _normalize(v, norm):
  axes = tuple(range(1, v.ndim))
  if norm == "linf":
    t = jnp.max(jnp.abs(v), axis=axes, keepdims=True)
  else:
    t = jnp.sqrt(jnp.sum(v * v, axis=axes, keepdims=True))
  return v / (t + 1e-12)


def _project(x_adv, x, eps, norm, clip):
  if norm == "linf":
    out = jnp.clip(x_adv, x - eps, x + eps)
  else:
    d = x_adv - x
    n = jnp.sqrt(jnp.sum(d * d, axis=tuple(range(1, d.ndim)), keepdims=True))
    out = x + _normalize(d, norm) * jnp.minimum(eps, n)
  return out if clip is None else jnp.clip(out, clip[0], clip[1])


def _single_run(logits_fn, x, y, key, eps, *, norm, loss, steps, clip, rho=0.75):
  """One APGD run: (misclassified at some iterate [B], the first misclassified iterate [B, ...])."""
  loss_fn = _ce if loss == "ce" else dlr_loss
  n = steps
  k0, k_min, decr = max(int(0.22 * n), 1), max(int(0.06 * n), 1), max(int(0.03 * n), 1)
  bshape = (x.shape[0],) + (1,) * (x.ndim - 1)

  def per_example(xa, yy):
    logits = logits_fn(xa)
    return loss_fn(logits, yy), logits
  rowwise = rowwise_value_and_grad(per_example)  # in row chunks on the CPU, as `ascend`

  def value_grad(xa):
    (per, logits), g = rowwise(xa, y)
    return per, logits, g

  if norm == "linf":
    t = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
  else:
    t = jax.random.normal(key, x.shape, x.dtype)
  x_adv = x + eps * _normalize(t, norm)
  x_adv = x_adv if clip is None else jnp.clip(x_adv, clip[0], clip[1])
  per, logits, g = value_grad(x_adv)
  fooled = jnp.argmax(logits, -1) != y
  carry = dict(x_adv=x_adv, x_old=x_adv, grad=g, step=jnp.full(bshape, 2.0 * eps, x.dtype),
               x_best=x_adv, g_best=g, loss_best=per, fooled=fooled, x_fooled=x_adv,
               losses=jnp.zeros((n, x.shape[0]), x.dtype), counter=0, k=k0,
               best_at_check=per, reduced=jnp.ones_like(per, bool))
  step_dir = (lambda v: jnp.sign(v)) if norm == "linf" else (lambda v: _normalize(v, norm))
  sel = lambda m, a, b: jnp.where(m.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)

  def body(i, c):
    a = jnp.where(i > 0, 0.75, 1.0)
    z = _project(c["x_adv"] + c["step"] * step_dir(c["grad"]), x, eps, norm, clip)
    x_new = _project(c["x_adv"] + a * (z - c["x_adv"]) + (1 - a) * (c["x_adv"] - c["x_old"]),
                     x, eps, norm, clip)
    per, logits, g = value_grad(x_new)
    wrong = jnp.argmax(logits, -1) != y
    x_fooled = sel(wrong & ~c["fooled"], x_new, c["x_fooled"])
    fooled = c["fooled"] | wrong
    losses = c["losses"].at[i].set(per)
    better = per > c["loss_best"]
    x_best, g_best = sel(better, x_new, c["x_best"]), sel(better, g, c["g_best"])
    loss_best = jnp.where(better, per, c["loss_best"])
    counter = c["counter"] + 1

    def checkpoint(args):
      x_cur, g_cur, step, k, best_at_check, reduced = args
      offs = jnp.arange(n)
      rows1 = jnp.take(losses, (i - offs) % n, axis=0)
      rows0 = jnp.take(losses, (i - offs - 1) % n, axis=0)
      rises = jnp.sum(jnp.where((offs < k)[:, None], rows1 > rows0, False), axis=0)
      osc = rises <= k * rho
      no_improve = ~reduced & (best_at_check >= loss_best)
      halve = osc | no_improve
      step = jnp.where(halve.reshape(bshape), step / 2.0, step)
      return (sel(halve, x_best, x_cur), sel(halve, g_best, g_cur), step,
              jnp.maximum(k - decr, k_min), loss_best, halve)

    at_check = counter == c["k"]
    x_cur, g_cur, step, k, best_at_check, reduced = lax.cond(
        at_check, checkpoint, lambda args: args,
        (x_new, g, c["step"], c["k"], c["best_at_check"], c["reduced"]))
    return dict(x_adv=x_cur, x_old=c["x_adv"], grad=g_cur, step=step, x_best=x_best,
                g_best=g_best, loss_best=loss_best, fooled=fooled, x_fooled=x_fooled,
                losses=losses, counter=jnp.where(at_check, 0, counter), k=k,
                best_at_check=best_at_check, reduced=reduced)

  c = lax.fori_loop(0, n, body, carry)
  return c["fooled"], c["x_fooled"]


def apgd(logits_fn: Callable, x: jnp.ndarray, y: jnp.ndarray, *, eps, norm: str,
         loss: str = "ce", steps: int = 100, restarts: int = 1, key: jax.Array | None = None,
         clip: tuple[float, float] | None = (0.0, 1.0)) -> jnp.ndarray:
  """Untargeted APGD on `loss` ('ce' or 'dlr'). Returns x_adv inside the eps-ball around x
  and `clip`: the first misclassified iterate where one was found, else x itself (as
  AutoAttack, clean-misclassified examples are returned unchanged). Compiled once per
  (logits_fn, shapes, norm, loss, steps, restarts); pass a `Partial` as `logits_fn`
  (`Trained.logits_fn()`) to share the program between models of one architecture.
  Differentiated through `models.layers.as_ncg_jax_layers`, as `pgd`."""
  if loss not in LOSSES:
    raise ValueError(f"unknown APGD loss '{loss}'; valid: {', '.join(LOSSES)}")
  if norm not in ("l2", "linf"):
    raise ValueError(f"unknown norm '{norm}'; valid: l2, linf")
  key = jax.random.key(0) if key is None else key
  return _apgd(as_partial(logits_fn), jnp.asarray(x), jnp.asarray(y), key, jnp.float32(eps),
               norm=norm, loss=loss, steps=steps, restarts=restarts,
               clip=None if clip is None else tuple(clip))


@functools.partial(jax.jit, static_argnames=("norm", "loss", "steps", "restarts", "clip"))
def _apgd(logits_fn, x, y, key, eps, *, norm, loss, steps, restarts, clip):
  logits_fn = as_ncg_jax_layers(logits_fn)
  out = x
  broken = jnp.argmax(logits_fn(x), -1) != y
  for r in range(restarts):
    fooled, x_fooled = _single_run(logits_fn, x, y, jax.random.fold_in(key, r), eps,
                                   norm=norm, loss=loss, steps=steps, clip=clip)
    new = fooled & ~broken
    out = jnp.where(new.reshape((-1,) + (1,) * (x.ndim - 1)), x_fooled, out)
    broken = broken | fooled
  return out


def robust_accuracy(logits_fn: Callable, x: jnp.ndarray, y: jnp.ndarray, *, eps, norm: str,
                    pgd_steps: int = 20, pgd_restarts: int = 2, apgd_steps: int = 100,
                    key: jax.Array | None = None,
                    clip: tuple[float, float] | None = (0.0, 1.0)) -> dict[str, jnp.ndarray]:
  """Per-example robustness [B] (True: still correctly classified) under each attack and
  under all of them ('any'): PGD on CE with `pgd_restarts` random starts (step 2.5 eps /
  steps), APGD-CE and APGD-DLR (DLR skipped below 3 classes). 'clean' is plain accuracy.
  One compiled program per (logits_fn, shapes, settings)."""
  key = jax.random.key(0) if key is None else key
  return _robust(as_partial(logits_fn), jnp.asarray(x), jnp.asarray(y), key, jnp.float32(eps),
                 norm=norm, pgd_steps=pgd_steps, pgd_restarts=pgd_restarts,
                 apgd_steps=apgd_steps, clip=None if clip is None else tuple(clip))


@functools.partial(jax.jit, static_argnames=("norm", "pgd_steps", "pgd_restarts", "apgd_steps",
                                             "clip"))
def _robust(logits_fn, x, y, key, eps, *, norm, pgd_steps, pgd_restarts, apgd_steps, clip):
  correct = lambda xa: jnp.argmax(logits_fn(xa), -1) == y
  out = {"clean": correct(x)}
  ok = out["clean"]
  for r in range(pgd_restarts):
    ok = ok & correct(pgd(logits_fn, x, y, eps=eps, norm=norm, steps=pgd_steps,
                          step_size=2.5 * eps / pgd_steps, key=jax.random.fold_in(key, r),
                          clip=clip))
  out["pgd"] = ok
  n_classes = jax.eval_shape(logits_fn, x).shape[-1]
  for loss in LOSSES if n_classes >= 3 else ("ce",):
    out[f"apgd_{loss}"] = out["clean"] & correct(
        _apgd(logits_fn, x, y, jax.random.fold_in(key, 1000), eps, norm=norm, loss=loss,
              steps=apgd_steps, restarts=1, clip=clip))
  out["any"] = functools.reduce(jnp.logical_and, out.values())
  return out


def robust_accuracy_over(trained, x: np.ndarray, y: np.ndarray, *, eps, norm: str,
                         clip=(0.0, 1.0), batch_size: int = 256, seed: int = 0,
                         **settings) -> dict[str, float]:
  """`robust_accuracy` of a `Trained` model over a whole split (uint8 images or float
  features) in fixed-shape padded batches, the last one only padded to a multiple of 8
  (`map_batches(fit_last=True)`): {attack: fraction still correct}. Every batch uses the same
  `key`; a row's random starts depend on its position in its batch only (JAX's partitionable
  threefry), so a shorter last batch attacks its rows exactly as a full one would."""
  fn, key = trained.logits_fn(), jax.random.key(seed)
  per = map_batches(lambda xb, yb: robust_accuracy(fn, to_input(xb), yb, eps=eps, norm=norm,
                                                   key=key, clip=clip, **settings),
                    x, y, batch_size=batch_size, label=f"robust accuracy ({norm} {eps:g})",
                    fit_last=True)
  return {k: float(np.mean(v)) for k, v in per.items()}
