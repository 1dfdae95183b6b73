"""Scores computed from logits and penultimate features (higher = in-distribution).

Formulas as OpenOOD v1.5 implements them (`openood/postprocessors/*`), unless noted.
`head_fn(head_params, features) -> logits` is the network's last (linear) layer.
"""
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from ncg_jax.registry import ConfigError


def msp(logits):
  """Maximum softmax probability (Hendrycks & Gimpel, ICLR 2017)."""
  return jnp.max(jax.nn.softmax(jnp.asarray(logits), axis=-1), axis=-1)


def max_logit(logits):
  """Maximum logit (MLS; Hendrycks et al., ICML 2022)."""
  return jnp.max(jnp.asarray(logits), axis=-1)


def energy(logits, temperature: float = 1.0):
  """Negative free energy T * logsumexp(z / T) (Liu et al., NeurIPS 2020)."""
  return temperature * logsumexp(jnp.asarray(logits) / temperature, axis=-1)


def linear_head(head_params, features):
  """The model zoo's last layer: Dense named 'head' (kernel [D, C], bias [C])."""
  return features @ head_params["kernel"] + head_params["bias"]


def react_threshold(train_features, percentile: float = 90.0) -> float:
  """ReAct's clipping threshold: the percentile of all training activations (flattened)."""
  return float(np.percentile(np.asarray(train_features), percentile))


def react(head_fn, head_params, features, threshold):
  """Energy of the head applied to min(h, threshold) (Sun et al., NeurIPS 2021)."""
  return energy(head_fn(head_params, jnp.minimum(jnp.asarray(features), threshold)))


def ash(head_fn, head_params, features, percentile: float = 90.0):
  """ASH-B (Djurisic et al., ICLR 2023) on the penultimate vector, as OpenOOD's `ash_b`:
  keep exactly the k = n - round(n p / 100) largest activations (OpenOOD scatters into the
  `topk` indices), set each kept one to sum(h) / k and the rest to 0, then the energy of the
  head. Ties (the zeros of sparse ReLU features when fewer than k are positive) are broken
  towards the lower index, as `lax.top_k` does; `torch.topk` leaves that order unspecified."""
  h = jnp.asarray(features)
  n = h.shape[-1]
  k = n - int(round(n * percentile / 100.0))
  if k < 1:
    raise ConfigError(f"ASH percentile {percentile} keeps no activation of {n}")
  s1 = jnp.sum(h, axis=-1, keepdims=True)
  flat = h.reshape(-1, n)
  idx = jax.lax.top_k(flat, k)[1]
  kept = jnp.zeros(flat.shape, bool).at[jnp.arange(flat.shape[0])[:, None], idx].set(True)
  shaped = jnp.where(kept.reshape(h.shape), s1 / k, 0.0)
  return energy(head_fn(head_params, shaped))


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


def vim(stats, head_fn, head_params, features):
  h = jnp.asarray(features)
  residual = jnp.linalg.norm((h - stats["u"]) @ stats["ns"], axis=-1)
  return energy(head_fn(head_params, h)) - stats["alpha"] * residual
