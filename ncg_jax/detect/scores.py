"""Scores computed from logits and penultimate features (higher = in-distribution).

Formulas as OpenOOD v1.5 implements them (`openood/postprocessors/*`), unless noted.
`head_fn(head_params, features) -> logits` is the network's last (linear) layer.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp
from scipy.special import logsumexp as np_logsumexp

from ncg_jax.registry import ConfigError


@jax.jit
def msp(logits):
  """Maximum softmax probability (Hendrycks & Gimpel, ICLR 2017)."""
  return jnp.max(jax.nn.softmax(jnp.asarray(logits), axis=-1), axis=-1)


@jax.jit
def max_logit(logits):
  """Maximum logit (MLS; Hendrycks et al., ICML 2022)."""
  return jnp.max(jnp.asarray(logits), axis=-1)


@functools.partial(jax.jit, static_argnames=("temperature",))
def energy(logits, temperature: float = 1.0):
  """Negative free energy T * logsumexp(z / T) (Liu et al., NeurIPS 2020)."""
  return temperature * logsumexp(jnp.asarray(logits) / temperature, axis=-1)


def linear_head(head_params, features):
  """The model zoo's last layer: Dense named 'head' (kernel [D, C], bias [C])."""
  return features @ head_params["kernel"] + head_params["bias"][None]


def react_threshold(train_features, percentile: float = 90.0) -> float:
  """ReAct's clipping threshold: the percentile of all training activations (flattened)."""
  return float(np.percentile(np.asarray(train_features), percentile))


@functools.partial(jax.jit, static_argnums=(0,))
def react(head_fn, head_params, features, threshold):
  """Energy of the head applied to min(h, threshold) (Sun et al., NeurIPS 2021)."""
  return energy(head_fn(head_params, jnp.minimum(jnp.asarray(features), threshold)))


ASH_VARIANTS = ("b", "p", "s")


def _kept_count(h, percentile: float) -> int:
  """k = n - round(n p / 100): how many of a row's n activations ASH and SCALE keep."""
  n = h.shape[-1]
  k = n - int(round(n * percentile / 100.0))
  if k < 1:
    raise ConfigError(f"percentile {percentile} keeps no activation of {n}")
  return k


def _top_k_mask(h, k):
  """Boolean mask of exactly the k largest entries of each row (the scatter into `topk`
  indices of OpenOOD's `ash_net.py`), in `lax.top_k`'s order: IEEE total order (0.0 above
  -0.0), ties towards the lower index (`torch.topk` leaves that order unspecified).

  k may be traced, so a percentile grid compiles one program per feature shape rather than
  one per grid value: each row's k-th largest key is found bit by bit (32 counting passes
  over the float's total-order integer key), and the ties at it are kept from the lowest
  index up. Against the scatter of `lax.top_k(h, k)` it replaces: the same masks, in the same
  or less time on the CPU (`benchmarks/RESULTS.md`, "ASH and SCALE with k as an argument")."""
  n = h.shape[-1]
  bits = jax.lax.bitcast_convert_type(h.reshape(-1, n), jnp.uint32)
  # total order as unsigned integers: negatives reversed below the positives
  key = jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(1 << 31))

  def bit(i, t):
    cand = t | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
    return jnp.where(jnp.sum(key >= cand, axis=-1, keepdims=True) >= k, cand, t)

  kth = jax.lax.fori_loop(0, 32, bit, jnp.zeros((key.shape[0], 1), jnp.uint32))
  above = key > kth
  tied = key == kth
  room = k - jnp.sum(above, axis=-1, keepdims=True)
  return (above | (tied & (jnp.cumsum(tied, axis=-1) <= room))).reshape(h.shape)


def ash_shape(features, percentile: float = 90.0, variant: str = "b"):
  """ASH (Djurisic et al., ICLR 2023) on the penultimate vector, as OpenOOD's `ash_b`,
  `ash_p` and `ash_s`: keep exactly the top k activations (`_top_k_mask`), then
  b: every kept one set to s1 / k (s1 = sum of all activations), the rest 0;
  p: the kept ones as they are, the rest 0;
  s: the kept ones times exp(s1 / s2) (s2 = sum of the kept ones), the rest 0."""
  h = jnp.asarray(features)
  return _ash_shape(h, _kept_count(h, percentile), variant)


@functools.partial(jax.jit, static_argnames=("variant",))
def _ash_shape(h, k, variant):
  kept = _top_k_mask(h, k)
  s1 = jnp.sum(h, axis=-1, keepdims=True)
  if variant == "b":
    return jnp.where(kept, s1 / k, 0.0)
  pruned = jnp.where(kept, h, 0.0)
  if variant == "p":
    return pruned
  if variant == "s":
    return pruned * jnp.exp(s1 / jnp.sum(pruned, axis=-1, keepdims=True))
  raise ConfigError(f"unknown ASH variant '{variant}'; valid: {', '.join(ASH_VARIANTS)}")


def ash(head_fn, head_params, features, percentile: float = 90.0, variant: str = "b"):
  """Energy of the head applied to the ASH-shaped features (`ash_shape`)."""
  h = jnp.asarray(features)
  return _ash(head_fn, head_params, h, _kept_count(h, percentile), variant)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _ash(head_fn, head_params, h, k, variant):
  return energy(head_fn(head_params, _ash_shape(h, k, variant)))


def scale(head_fn, head_params, features, percentile: float = 85.0):
  """SCALE (Xu et al., ICLR 2024; OpenOOD's `scale_net.py`): the unpruned features times
  exp(s1 / s2), s1 the sum of all activations and s2 that of the top k; then energy."""
  h = jnp.asarray(features)
  return _scale(head_fn, head_params, h, _kept_count(h, percentile))


@functools.partial(jax.jit, static_argnums=(0,))
def _scale(head_fn, head_params, h, k):
  kept = _top_k_mask(h, k)
  s1 = jnp.sum(h, axis=-1, keepdims=True)
  s2 = jnp.sum(jnp.where(kept, h, 0.0), axis=-1, keepdims=True)
  return energy(head_fn(head_params, h * jnp.exp(s1 / s2)))


def fit_vim(train_features, head_params, dim: int) -> dict:
  """ViM (Wang et al., CVPR 2022) as OpenOOD v1.5: origin u = -pinv(W^T) b, the principal
  subspace of the centred training features' uncentred covariance, the residual space
  beyond its top `dim` directions, and alpha = mean max-logit / mean residual norm."""
  h = np.asarray(train_features, np.float64)
  w = np.asarray(head_params["kernel"], np.float64)  # [D, C]
  b = np.asarray(head_params["bias"], np.float64)
  if not 0 < dim < h.shape[1]:
    raise ConfigError(f"ViM dim={dim} must be between 1 and the feature size {h.shape[1]} - 1")
  u = -np.linalg.pinv(w.T) @ b
  centred = h - u
  eigval, eigvec = np.linalg.eigh(centred.T @ centred / len(h))
  ns = eigvec[:, np.argsort(eigval)[::-1][dim:]]
  vlogit = np.linalg.norm(centred @ ns, axis=-1)
  alpha = np.max(h @ w + b, axis=-1).mean() / vlogit.mean()
  return {"u": u.astype(np.float32), "ns": ns.astype(np.float32), "alpha": np.float32(alpha)}


@functools.partial(jax.jit, static_argnums=(1,))
def vim(stats, head_fn, head_params, features):
  h = jnp.asarray(features)
  residual = jnp.linalg.norm((h - stats["u"][None]) @ stats["ns"], axis=-1)
  return energy(head_fn(head_params, h)) - stats["alpha"] * residual


@jax.jit
def entropy(logits):
  """Minus the entropy of softmax(z) (higher = more confident = in-distribution)."""
  logp = jax.nn.log_softmax(jnp.asarray(logits), axis=-1)
  return jnp.sum(jnp.exp(logp) * logp, axis=-1)


def fit_temperature(val_logits, val_labels) -> float:
  """TempScale (Guo et al., ICML 2017): the T > 0 minimising the ID-validation NLL of
  softmax(z / T). OpenOOD runs 50 L-BFGS steps (lr 0.01) from T = 1.5; this minimises the
  same one-dimensional convex objective in log T with a bounded Brent search (T in
  [0.01, 100]), which reaches the same minimiser without a step size to tune."""
  from scipy.optimize import minimize_scalar
  from scipy.special import log_softmax
  z = np.asarray(val_logits, np.float64)
  y = np.asarray(val_labels)
  nll = lambda log_t: -np.mean(log_softmax(z / np.exp(log_t), axis=1)[np.arange(len(y)), y])
  res = minimize_scalar(nll, bounds=(np.log(0.01), np.log(100.0)), method="bounded",
                        options={"xatol": 1e-6})
  return float(np.exp(res.x))


@jax.jit
def temp_scale(logits, temperature: float):
  """Maximum softmax probability of z / T."""
  return msp(jnp.asarray(logits) / temperature)


@functools.partial(jax.jit, static_argnames=("m",))
def gen(logits, gamma: float = 0.1, m: int = 100):
  """GEN (Liu et al., CVPR 2023; OpenOOD's `gen_postprocessor.py`): minus the generalised
  entropy sum over the M largest probabilities of p^gamma (1 - p)^gamma (M capped at C)."""
  p = jax.nn.softmax(jnp.asarray(logits), axis=-1)
  top = jax.lax.top_k(p, min(int(m), p.shape[-1]))[0]
  return -jnp.sum(top ** gamma * (1.0 - top) ** gamma, axis=-1)


def fit_klm(val_logits) -> np.ndarray:
  """KLM (Hendrycks et al., ICML 2022; OpenOOD's `kl_matching_postprocessor.py`): per
  class c, the mean softmax of the ID-validation examples predicted c ([C', C]; classes
  no validation example is predicted as are left out)."""
  z = np.asarray(val_logits, np.float64)
  p = np.exp(z - np_logsumexp(z, axis=1, keepdims=True))
  pred = p.argmax(1)
  return np.stack([p[pred == c].mean(0) for c in range(p.shape[1]) if np.any(pred == c)]
                  ).astype(np.float32)


@jax.jit
def klm(templates, logits):
  """Minus the smallest KL(p || template_c) = sum_k p_k log(p_k / t_ck) over the templates."""
  logp = jax.nn.log_softmax(jnp.asarray(logits), axis=-1)
  p = jnp.exp(logp)
  logt = jnp.log(jnp.asarray(templates))
  kl = jnp.sum(p * logp, axis=-1, keepdims=True) - p @ logt.T
  return -jnp.min(kl, axis=-1)


def dice_mask(train_features, head_params, percentile: float = 90.0) -> np.ndarray:
  """DICE (Sun & Li, ECCV 2022; OpenOOD's `dice_postprocessor.py`): keep weight w_jc where
  its contribution mean_train(h_j) * w_jc exceeds the p-th percentile of all of them."""
  w = np.asarray(head_params["kernel"], np.float64)  # [D, C]
  contrib = np.asarray(train_features, np.float64).mean(0)[:, None] * w
  return contrib > np.percentile(contrib, percentile)


@jax.jit
def dice(head_params, mask, features):
  """Energy of the head with the weights outside `mask` zeroed."""
  kernel = jnp.where(jnp.asarray(mask), head_params["kernel"], 0.0)
  return energy(jnp.asarray(features) @ kernel + jnp.asarray(head_params["bias"])[None])


def fit_she(train_features, train_logits, train_labels, num_classes: int) -> np.ndarray:
  """SHE (Zhang et al., ICLR 2023; OpenOOD's `she_postprocessor.py`): per class, the mean
  feature of the training examples classified correctly as that class ([C, D])."""
  h = np.asarray(train_features, np.float64)
  y = np.asarray(train_labels)
  ok = np.asarray(train_logits).argmax(1) == y
  return np.stack([h[ok & (y == c)].mean(0) if np.any(ok & (y == c)) else np.zeros(h.shape[1])
                   for c in range(num_classes)]).astype(np.float32)


@jax.jit
def she(patterns, logits, features):
  """Inner product of the features with the stored pattern of the predicted class."""
  pred = jnp.argmax(jnp.asarray(logits), axis=-1)
  return jnp.sum(jnp.asarray(features) * jnp.asarray(patterns)[pred], axis=-1)


def fdbd_denominators(head_params) -> np.ndarray:
  """[C, C] distances ||w_p - w_c|| between the head's class weight vectors (diagonal 1,
  as OpenOOD's `denominator_matrix`)."""
  w = np.asarray(head_params["kernel"], np.float64).T  # [C, D]
  d = np.linalg.norm(w[:, None, :] - w[None, :, :], axis=-1)
  np.fill_diagonal(d, 1.0)
  return d.astype(np.float32)


@jax.jit
def fdbd(head_params, denominators, features, train_mean=None):
  """fDBD (Liu & Qin, ICML 2024; OpenOOD's `fdbd_postprocessor.py`): sum over classes c of
  |z_pred - z_c| / ||w_pred - w_c|| (the estimated feature distance to each decision
  boundary; `fdbd_denominators`), divided by ||h - mean_train(h)|| (`train_mean` given) or
  by ||h||. OpenOOD picks between the two normalisers on validation data."""
  h = jnp.asarray(features)
  z = linear_head(head_params, h)
  pred = jnp.argmax(z, axis=-1)
  zp = jnp.take_along_axis(z, pred[:, None], axis=-1)
  ratio = jnp.abs(zp - z) / jnp.asarray(denominators)[pred]
  norm = jnp.linalg.norm(h if train_mean is None else h - jnp.asarray(train_mean)[None], axis=-1)
  return jnp.sum(ratio, axis=-1) / norm
