"""Detectors that differentiate the network: ODIN and GradNorm.

ODIN (Liang et al., ICLR 2018), exactly as `facebookresearch/odin/code/calData.py`: label =
argmax of the logits; gradient of CE(logits / T, label) w.r.t. the input; direction +1 where
that gradient is >= 0 and -1 elsewhere (a zero gradient maps to +1, unlike `sign`), divided
by the per-channel `input_std` (the original divides by its normalisation std so that
epsilon is in raw-pixel units); x' = x - epsilon * direction; score = max softmax(f(x') / T).
Batched: one forward and one VJP (the summed loss separates per example in eval mode), then
one forward.

GradNorm (Huang, Geng, Li, NeurIPS 2021): per example, the L1 norm of the gradient of
sum_c -log_softmax(head(h) / T)_c (the original's all-ones target) w.r.t. the head's
parameters. `gradnorm` differentiates any `head_fn` (vmap of grad, summed over all leaves
of `head_params`); for a linear head the gradient is outer(h, (C q - 1) / T) with q =
softmax(z / T), so `gradnorm_linear` needs no backward pass at all.
"""

import jax
import jax.numpy as jnp
import numpy as np

from ncg_jax.detect.scores import linear_head
from ncg_jax.functional import as_partial, rowwise_value_and_grad
from ncg_jax.models.layers import as_ncg_jax_layers


@jax.jit
def _odin_direction(logits_fn, x, temperature, input_std):
  """ODIN's step before its magnitude: +1 / std where the gradient is >= 0, else -1 / std."""
  net = as_ncg_jax_layers(logits_fn)

  def loss(xx):  # per example: its own CE against its own predicted label
    logits = net(xx)
    label = jax.lax.stop_gradient(jnp.argmax(logits, axis=-1))
    return -jnp.take_along_axis(jax.nn.log_softmax(logits / temperature), label[:, None],
                                axis=-1)[:, 0], ()
  _, g = rowwise_value_and_grad(loss, sign_only=True)(x)
  std = input_std.reshape((1,) * (g.ndim - input_std.ndim) + input_std.shape)  # per channel
  return jnp.where(g >= 0, 1.0, -1.0) / std


@jax.jit
def _perturbed_msp(logits_fn, x, direction, temperature, epsilon):
  x_perturbed = x - epsilon * direction
  logits = as_ncg_jax_layers(logits_fn)(x_perturbed)  # as the gradient's (NCHW nets: NHWC)
  return jnp.max(jax.nn.softmax(logits / temperature, axis=-1), axis=-1)


def odin(logits_fn, x, *, temperature: float = 1000.0, epsilon=0.0014, input_std=1.0):
  """ODIN scores of a batch `x` (the model's input units). `input_std`: a scalar or one
  value per channel (last axis). `epsilon`: a scalar, giving scores [B], or a sequence of E
  magnitudes, giving [B, E] from one gradient (the direction depends on the temperature, not
  on epsilon; as `distances.ensemble_layer_scores`): a validation search over ODIN's grid
  pays one forward for each further epsilon instead of a forward, a VJP and a forward
  (`registry`; CNN002, 8 points on 2 x 1,000 images: 1.55-1.70x faster, same scores).

  Two compiled programs, the direction (forward + input VJP) and the perturbation with the
  scoring forward, called once per epsilon (in one program XLA:CPU shared the first pass's
  broadcast biases with the second forward and materialised them, four 22 MB broadcasts for
  CNN002 at batch 256, which made ODIN 8.2x a forward instead of 6.2x, `python -m
  benchmarks.detect`). With a non-unit `input_std`, x - epsilon * direction can differ in its
  last bit from the form before this split (XLA:CPU contracts it into a fused multiply-add in
  one program and not in the other); with std 1, what ncg_jax's models use, it is exact.
  The gradient and the scoring forward run through `models.layers.as_ncg_jax_layers(logits_fn)`
  (NCHW networks' convolutions and pools in NHWC; a plain Flax network's scores bitwise
  those of `logits_fn` itself, CNN002 at batch 256): a user network's
  `nn.max_pool(x, (2, 2), (2, 2))` differentiates as an elementwise select instead of
  XLA:CPU's scalar `select_and_scatter` (same values; at an exact tie inside a window the
  gradient is shared by the tied elements instead of going to the first, so the direction
  can differ there and only there) and its `nn.Conv`s through ncg_jax's convolution VJP; and
  on the CPU in chunks of 64 rows, each chunk's forward and VJP together
  (`functional.rowwise_value_and_grad`, whose docstring has that form's figures; before it,
  CNN002's perturbation at batch 256 took 94 ms in one piece and 64-70 ms with only its
  forward in four chunks, `benchmarks/RESULTS.md`). Only the gradient's signs are read, so
  it is traced sign-only (`functional.traces_sign_only_gradient`): a first convolution with
  at most three input channels takes its input gradient as a matrix product and shifted adds,
  summed in another order than XLA:CPU's transposed convolution (the gradient within 2.3e-7
  of its largest element, CNN002 at batch 256), so a direction can flip only where the
  gradient is within rounding of zero (CNN002, WRN-16-4, ResNet-18 at the benchmark's
  batches: no flip, scores bitwise equal; ODIN 0.95-0.97x the time through CNN002)."""
  logits_fn = as_partial(logits_fn)
  eps = np.asarray(epsilon, np.float32)
  if eps.ndim > 1:
    raise ValueError(f"epsilon: a scalar or a 1-D sequence, got shape {eps.shape}")
  t = jnp.float32(temperature)
  x = jnp.asarray(x, jnp.float32)
  direction = _odin_direction(logits_fn, x, t, jnp.asarray(input_std, jnp.float32))
  scores = [_perturbed_msp(logits_fn, x, direction, t, e) for e in eps.reshape(-1)]
  return scores[0] if eps.ndim == 0 else jnp.stack(scores, axis=1)


@jax.jit
def _gradnorm(head_fn, head_params, features, temperature):
  def loss(p, h):
    return -jnp.sum(jax.nn.log_softmax(head_fn(p, h[None])[0] / temperature))
  grads = jax.vmap(jax.grad(loss), in_axes=(None, 0))(head_params, features)
  return sum(jnp.sum(jnp.abs(g).reshape(g.shape[0], -1), axis=1) for g in jax.tree.leaves(grads))


def gradnorm(head_fn, head_params, features, *, temperature: float = 1.0):
  """Per-example L1 norm of the head-parameter gradient (autodiff, any head)."""
  return _gradnorm(as_partial(head_fn), head_params, jnp.asarray(features, jnp.float32),
                   jnp.float32(temperature))


def gradnorm_linear(head_params, features, *, temperature: float = 1.0,
                    include_bias: bool = True):
  """Closed form of `gradnorm` for a linear head z = h W + b:
  (||h||_1 + [include_bias]) * sum_c |C q_c - 1| / T. The original code reads the kernel's
  gradient only (include_bias=False); `gradnorm` sums every leaf it is given."""
  h = jnp.asarray(features, jnp.float32)
  logits = linear_head(head_params, h)
  c = logits.shape[-1]
  q = jax.nn.softmax(logits / temperature, axis=-1)
  dz = jnp.sum(jnp.abs(c * q - 1.0), axis=-1) / temperature
  return dz * (jnp.sum(jnp.abs(h), axis=-1) + (1.0 if include_bias else 0.0))
