"""NAC-UE: neuron activation coverage (Liu et al., ICLR 2024; `BierOne/ood_coverage`).

Per chosen layer l, with o the layer's output and g the gradient of
KL(uniform || softmax(logits)) (computed as sum over the batch of sum_c -log_softmax(z)_c / C)
w.r.t. o, both summed over spatial positions: neuron state z = sigmoid(alpha * o * g).
All layers' (o, g) come from one forward and one VJP, through the model's `perturb` points
(`pooled_states`); cache them once and the hyperparameter search needs no network pass.

Fit: per layer and neuron, a histogram of states over a class-balanced training subset,
with the reference's M edges dense around 0.5 (`edges`); coverage = min(count / O, 1).
Score: mean over layers of the mean over neurons of the coverage of the bin each neuron's
state falls in (`searchsorted` and a gather, not a dense [B, M, N] mask).
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def edges(m: int) -> np.ndarray:
  """The reference's `logspace(base=1e3, M)` thresholds: M edges, M - 1 bins, dense around
  0.5 and coarse near 0 and 1; the last bin [1.01, 1.2) is never reached by a sigmoid."""
  x = np.linspace(1.0, np.sqrt(1000.0), m // 2)
  x_l = np.log(x) / np.log(1000.0)
  t = np.concatenate([x_l[:-1], (1.0 - x_l)[::-1]])
  t[-1] += 0.01
  return np.append(t, 1.2)


def pooled_states(model: nn.Module, variables: dict, x, layers: tuple[str, ...]):
  """{layer: (o, g)} spatially summed, [B, N] each, from one forward and one VJP."""
  return _pooled(model, layers, variables, jnp.asarray(x, jnp.float32))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _pooled(model, layers, variables, x):
  def loss(perturbations):
    (logits, _), inter = model.apply({**variables, "perturbations": perturbations}, x,
                                     train=False, mutable=["intermediates"])
    c = logits.shape[-1]
    return -jnp.sum(jax.nn.log_softmax(logits)) / c, inter["intermediates"]

  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))["perturbations"]
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, x.dtype), shapes)
  grads, inter = jax.grad(loss, has_aux=True)(zeros)
  pool = lambda a: a.reshape(a.shape[0], -1, a.shape[-1]).sum(axis=1)
  return {name: (pool(inter[name][0]), pool(grads[name])) for name in layers}


def states(o, g, alpha):
  return jax.nn.sigmoid(alpha * o * g)


def fit(pooled: dict, params: dict) -> dict:
  """params[layer] = {"alpha", "M", "O"}: per-layer coverage tables [M - 1, N]."""
  tables = {}
  for name, (o, g) in pooled.items():
    p = params[name]
    t = edges(int(p["M"]))
    z = np.asarray(states(jnp.asarray(o), jnp.asarray(g), p["alpha"]))
    bins = np.searchsorted(t, z, side="right") - 1  # bin k holds [t_k, t_{k+1})
    n = z.shape[1]
    counts = np.zeros((len(t) - 1, n))
    valid = (bins >= 0) & (bins < len(t) - 1)
    np.add.at(counts, (bins[valid], np.nonzero(valid)[1]), 1.0)
    tables[name] = {"edges": t, "coverage": np.minimum(counts / float(p["O"]), 1.0),
                    "alpha": float(p["alpha"])}
  return tables


def score(tables: dict, pooled: dict):
  per_layer = []
  for name, tab in tables.items():
    o, g = pooled[name]
    z = states(jnp.asarray(o), jnp.asarray(g), tab["alpha"])
    t, cov = jnp.asarray(tab["edges"]), jnp.asarray(tab["coverage"], jnp.float32)
    bins = jnp.searchsorted(t, z, side="right") - 1
    inside = (bins >= 0) & (bins < cov.shape[0])
    gathered = jnp.take_along_axis(cov, jnp.clip(bins, 0, cov.shape[0] - 1), axis=0)
    per_layer.append(jnp.mean(jnp.where(inside, gathered, 0.0), axis=-1))
  return jnp.mean(jnp.stack(per_layer), axis=0)


def balanced_subset(labels, size: int, num_classes: int, seed: int = 1) -> np.ndarray:
  """A class-balanced sample of `size` indices (size // num_classes per class)."""
  rng = np.random.default_rng(seed)
  per = size // num_classes
  return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per]
                                 for c in range(num_classes)]))
