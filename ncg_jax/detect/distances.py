"""Feature-space detectors: Mahalanobis (with Lee et al.'s input preprocessing) and KNN.

Mahalanobis (Lee et al., NeurIPS 2018), as OpenOOD's MDS: class means and one tied
covariance of the class-centred training features (maximum likelihood, divided by N),
pseudo-inverse precision; score = max_c -(h - mu_c)^T P (h - mu_c). Evaluated through
h^T P h - 2 h^T P mu_c + mu_c^T P mu_c, O(B D^2 + B D C), never a [B, B] product.

KNN (Sun et al., ICML 2022): features L2-normalised; score = minus the L2 distance to the
k-th nearest normalised training feature, searched with `ncg_jax.neighbors`.
"""
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ncg_jax import neighbors
from ncg_jax.batching import map_batches
from ncg_jax.detect import metrics
from ncg_jax.functional import as_partial, rowwise_value_and_grad
from ncg_jax.models.layers import as_ncg_jax_layers
from ncg_jax.models.trained import to_input


@jax.jit
def _apply(fn, x):
  """`fn` on a batch as one compiled program (its arrays traced: `fn` is a `Partial`)."""
  return fn(to_input(x))


def fit_mahalanobis(features, labels, num_classes: int) -> dict:
  """Class means and the shared (maximum-likelihood) covariance's pseudo-inverse of training
  features `features` [N, D] with integer `labels` in [0, num_classes); every class needs at
  least one example."""
  h = np.asarray(features, np.float64)
  y = np.asarray(labels)
  empty = np.setdiff1d(np.arange(num_classes), y)
  if empty.size:
    raise ValueError(f"fit_mahalanobis: no training features of class(es) {empty.tolist()} "
                     f"(labels must cover all {num_classes} classes)")
  means = np.stack([h[y == c].mean(axis=0) for c in range(num_classes)])
  centred = h - means[y]
  cov = centred.T @ centred / len(h)
  precision = np.linalg.pinv(cov, hermitian=True)
  return {"means": means.astype(np.float32), "precision": precision.astype(np.float32)}


def mahalanobis_distances(stats, features):
  """[B, C] squared Mahalanobis distances to every class mean."""
  h = jnp.asarray(features, jnp.float32)
  p, mu = stats["precision"], stats["means"]
  hp = h @ p
  mup = mu @ p
  return (jnp.sum(hp * h, -1)[:, None] - 2.0 * hp @ mu.T + jnp.sum(mup * mu, -1)[None, :])


def mahalanobis(stats, features):
  return -jnp.min(mahalanobis_distances(stats, features), axis=-1)


def fit_rmds(features, labels, num_classes: int) -> dict:
  """RMDS (Ren et al., 2021; OpenOOD's `rmds_postprocessor.py`): the class statistics of
  `fit_mahalanobis` plus a background Gaussian: the mean of all training features and the
  (maximum-likelihood) covariance around it."""
  class_stats = fit_mahalanobis(features, labels, num_classes)
  h = np.asarray(features, np.float64)
  mean = h.mean(axis=0)
  cov = (h - mean).T @ (h - mean) / len(h)
  background = {"means": mean[None].astype(np.float32),
                "precision": np.linalg.pinv(cov, hermitian=True).astype(np.float32)}
  return {"class": class_stats, "background": background}


def rmds(stats, features):
  """max_c [d_0(h) - d_c(h)]: each class distance relative to the background one."""
  d = mahalanobis_distances(stats["class"], features)
  d0 = mahalanobis_distances(stats["background"], features)
  return jnp.max(d0 - d, axis=-1)


@jax.jit
def _mahalanobis_preprocessed(features_fn, stats, x, epsilon):
  features_fn = as_ncg_jax_layers(features_fn)

  def closest(xx):  # per example: the distance to its closest class Gaussian
    return jnp.min(mahalanobis_distances(stats, features_fn(xx)), axis=-1), ()
  _, g = rowwise_value_and_grad(closest, sign_only=True)(x)
  return mahalanobis(stats, features_fn(x - epsilon * jnp.where(g >= 0, 1.0, -1.0)))


def mahalanobis_preprocessed(features_fn, stats, x, *, epsilon: float = 0.0014):
  """Lee et al.'s input preprocessing: step x by epsilon against the gradient sign of the
  distance to the closest class Gaussian, then score the perturbed input's features.
  `features_fn` is differentiated through `models.layers.as_ncg_jax_layers`, as ODIN's
  `logits_fn` (fast gradients of a plain Flax network's pools and convolutions on the CPU),
  and on the CPU in chunks of 64 rows (`functional.rowwise_value_and_grad`), sign-only as
  ODIN's (`functional.traces_sign_only_gradient`)."""
  return _mahalanobis_preprocessed(as_partial(features_fn), stats, jnp.asarray(x, jnp.float32),
                                   jnp.float32(epsilon))


def normalize(h) -> np.ndarray:
  h = np.asarray(h, np.float32)
  return h / (np.linalg.norm(h, axis=-1, keepdims=True) + 1e-10)


def fit_knn(train_features) -> np.ndarray:
  """The bank of L2-normalised training features."""
  return normalize(train_features)


def knn(index, features, k: int = 50, backend: str = "auto"):
  dist, _ = neighbors.nearest(index, normalize(features), k=k, backend=backend, columns=(k - 1,))
  return -dist[:, 0]


@functools.partial(jax.jit, static_argnames=("k", "block"))
def _top_k_inner(bank, queries, k: int, block: int):
  """[Q, k] largest inner products of each query with the bank rows, in bank blocks
  (memory O(Q block)); the running top k is merged block by block in a `lax.scan`."""
  n = bank.shape[0]
  pad = (-n) % block
  blocks = jnp.pad(bank, ((0, pad), (0, 0))).reshape(-1, block, bank.shape[1])
  valid = (jnp.arange(n + pad) < n).reshape(-1, block)

  def step(best, xs):
    b, v = xs
    sims = jnp.where(v[None, :], queries @ b.T, -jnp.inf)
    return jax.lax.top_k(jnp.concatenate([best, sims], axis=1), k)[0], None

  init = jnp.full((queries.shape[0], k), -jnp.inf, queries.dtype)
  return jax.lax.scan(step, init, (blocks, valid))[0]


def fit_nnguide(train_features, train_logits, fraction: float = 0.01, k: int = 100,
                seed: int = 0) -> np.ndarray:
  """NNGuide (Park et al., ICCV 2023; OpenOOD's `nnguide_postprocessor.py`): a bank of a
  `fraction` of the training examples (at least k; OpenOOD takes the first batches of its
  shuffled loader, this a seeded sample), each normalised feature times its energy."""
  h = np.asarray(train_features, np.float32)
  n = max(k, int(round(fraction * len(h))))
  idx = np.sort(np.random.default_rng(seed).permutation(len(h))[:n])
  energy = np.asarray(jax.scipy.special.logsumexp(jnp.asarray(train_logits)[idx], axis=-1))
  return _normalize_openood(h[idx]) * energy[:, None]


def nnguide(bank, logits, features, k: int = 100):
  """Energy times the mean of the k largest inner products of the normalised feature
  with the bank."""
  q = jnp.asarray(_normalize_openood(features))
  top = _top_k_inner(jnp.asarray(bank), q, min(k, len(bank)), min(4096, len(bank)))
  return jnp.mean(top, axis=-1) * jax.scipy.special.logsumexp(jnp.asarray(logits), axis=-1)


def _normalize_openood(h) -> np.ndarray:
  """OpenOOD's `x / ||x|| + 1e-10` (the constant is added after the division)."""
  h = np.asarray(h, np.float32)
  return h / np.linalg.norm(h, axis=-1, keepdims=True) + 1e-10


@functools.partial(jax.jit, static_argnames=("power", "block"))
def _relation(bank_h, bank_p, h, p, power: int, block: int):
  n = bank_h.shape[0]
  pad = (-n) % block
  bh = jnp.pad(bank_h, ((0, pad), (0, 0))).reshape(-1, block, bank_h.shape[1])
  bp = jnp.pad(bank_p, ((0, pad), (0, 0))).reshape(-1, block, bank_p.shape[1])

  def step(total, xs):
    b_h, b_p = xs  # padded rows are zero vectors: similarity 0, masked by the threshold
    r = jnp.maximum(h @ b_h.T, 0.0) * (p @ b_p.T)
    return total + jnp.sum(jnp.where(r > 0.03, r ** power, 0.0), axis=1), None

  return jax.lax.scan(step, jnp.zeros(h.shape[0], h.dtype), (bh, bp))[0]


def fit_relation(train_features, train_logits) -> dict:
  """Relation (Kim et al., NeurIPS 2023; OpenOOD's `relation_postprocessor.py`): the bank
  of every training example's normalised feature and softmax."""
  return {"h": normalize(train_features),
          "p": np.asarray(jax.nn.softmax(jnp.asarray(train_logits), axis=-1))}


def relation(bank, logits, features, power: int = 8):
  """sum_t r_t^power over training examples t with r_t = max(0, <h, h_t>) <p, p_t> > 0.03
  (h normalised, p the softmax; r_t >= 0, so OpenOOD's sign(r) |r|^power is r^power)."""
  p = jax.nn.softmax(jnp.asarray(logits), axis=-1)
  h = jnp.asarray(normalize(features))
  return _relation(jnp.asarray(bank["h"]), jnp.asarray(bank["p"]), h, p, int(power),
                   min(4096, len(bank["h"])))


def layer_features(model, variables, x, layers: tuple[str, ...]):
  """{layer: [B, C]} spatial means of the named intermediates (Lee et al.'s feature maps)."""
  _, inter = model.apply(variables, x, train=False, mutable=["intermediates"])
  pool = lambda a: a.reshape(a.shape[0], -1, a.shape[-1]).mean(axis=1)
  return {name: pool(inter["intermediates"][name][0]) for name in layers}


@jax.jit
def _ensemble_layer_scores(features_fn, stats, x, epsilons):
  """[B, E, L]: per layer, the input gradient's sign against that layer's closest class,
  then for each magnitude in `epsilons` [E] the Mahalanobis score of the preprocessed input
  (Lee et al.: one VJP per layer, one forward per layer and magnitude; the sign does not
  depend on the magnitude, so a grid of magnitudes shares it). The VJPs are sign-only and in
  row chunks on the CPU, as `mahalanobis_preprocessed`'s."""
  features_fn = as_ncg_jax_layers(features_fn)
  cols = []
  for name in sorted(stats):
    def closest(xx, name=name):
      return jnp.min(mahalanobis_distances(stats[name], features_fn(xx)[name]), axis=-1), ()
    _, g = rowwise_value_and_grad(closest, sign_only=True)(x)
    sign = jnp.where(g >= 0, 1.0, -1.0)
    score = lambda e, name=name, sign=sign: mahalanobis(stats[name], features_fn(x - e * sign)[name])
    cols.append(jax.lax.map(score, epsilons).T)  # [B, E]
  return jnp.stack(cols, axis=2)


def ensemble_layer_scores(features_fn, stats: dict, x, *, epsilon=0.0):
  """Per-layer preprocessed Mahalanobis scores [B, L] (layers in sorted order) for one
  magnitude `epsilon`, or [B, E, L] for a sequence of E magnitudes;
  `features_fn(x) -> {layer: [B, C]}`."""
  eps = jnp.atleast_1d(jnp.asarray(epsilon, jnp.float32))
  out = _ensemble_layer_scores(as_partial(features_fn), stats, jnp.asarray(x, jnp.float32), eps)
  return out if np.ndim(epsilon) else out[:, 0]


def fit_ensemble_weights(scores_id: np.ndarray, scores_ood: np.ndarray) -> dict:
  """Logistic regression (cross-validated, as Lee et al.) from per-layer scores to
  P(in-distribution); the ensemble score is its linear predictor."""
  import warnings
  from sklearn.linear_model import LogisticRegressionCV
  x = np.concatenate([scores_id, scores_ood])
  y = np.r_[np.ones(len(scores_id)), np.zeros(len(scores_ood))]
  with warnings.catch_warnings():  # scikit-learn 1.9 announces default changes; none apply
    warnings.simplefilter("ignore", FutureWarning)
    lr = LogisticRegressionCV(cv=3, max_iter=1000, scoring="neg_log_loss").fit(x, y)
  return {"weights": lr.coef_[0].astype(np.float32), "bias": np.float32(lr.intercept_[0])}


def mahalanobis_ensemble(weights: dict, layer_scores):
  return jnp.asarray(layer_scores) @ weights["weights"] + weights["bias"]


ENSEMBLE_EPSILONS = (0.0, 0.01, 0.005, 0.002, 0.0014, 0.001, 0.0005)


@dataclasses.dataclass(frozen=True)
class EnsembleFit:
  """A fitted Mahalanobis layer ensemble: `layer_fn(x) -> {layer: [B, C]}` (a `Partial`),
  per-layer class statistics, the chosen preprocessing magnitude and the regression."""
  layer_fn: Any
  stats: dict
  epsilon: float
  weights: dict


def fit_mahalanobis_ensemble(layer_fn, logits_fn, train_x, train_y, num_classes: int,
                             id_x, id_y, *, epsilons=ENSEMBLE_EPSILONS,
                             batch_size: int = 256) -> EnsembleFit:
  """Lee et al.'s layer ensemble as the GradNorm repository tunes it
  (`tune_mahalanobis_hyperparameter.py`): class statistics per layer (spatial means of each
  map) on the training images; the ID images `id_x` (1,000 there) split in halves, each with
  an FGSM copy clip(x + 0.05 sign(grad CE), 0, 1) as the "OOD" class; for every magnitude in
  `epsilons` a logistic regression is fitted on the first half's pairs and its FPR95
  measured on the second's; the magnitude with the lowest FPR95 keeps its regression. No OOD
  data is used. (The repository clamps to [0, 1] inputs normalised to [-1, 1]; inputs here
  are [0, 1] pixels with the normalisation inside the model, so the clamp is the pixel box.)
  Images are uint8 or [0, 1] floats."""
  layer_fn, logits_fn = as_partial(layer_fn), as_ncg_jax_layers(logits_fn)
  feats = map_batches(lambda xb: _apply(layer_fn, xb), train_x, batch_size=batch_size,
                      label="layer features")
  stats = {n: fit_mahalanobis(f, train_y, num_classes) for n, f in feats.items()}

  @jax.jit
  def fgsm(xb, yb):  # one step read only for its signs: sign-only, in row chunks
    xb = to_input(xb)
    ce = lambda xx, yy: (optax.softmax_cross_entropy_with_integer_labels(logits_fn(xx), yy), ())
    _, g = rowwise_value_and_grad(ce, sign_only=True)(xb, yb)
    return jnp.clip(xb + 0.05 * jnp.sign(g), 0.0, 1.0)

  x_adv = map_batches(fgsm, id_x, np.asarray(id_y, np.int32), batch_size=batch_size)
  half = len(id_x) // 2
  per = lambda a: np.asarray(map_batches(lambda xb: ensemble_layer_scores(
      layer_fn, stats, to_input(xb), epsilon=tuple(epsilons)), a, batch_size=batch_size,
      label="Mahalanobis ensemble tuning"))  # [N, E, L]: every magnitude in one pass
  scores_in, scores_adv = per(id_x), per(x_adv)
  best = None
  for i, eps in enumerate(epsilons):
    s_in, s_adv = scores_in[:, i], scores_adv[:, i]
    w = fit_ensemble_weights(s_in[:half], s_adv[:half])
    fpr = metrics.evaluate(mahalanobis_ensemble(w, s_in[half:]),
                           mahalanobis_ensemble(w, s_adv[half:]))["fpr95"]
    if best is None or fpr < best[0]:
      best = (fpr, eps, w)
  return EnsembleFit(layer_fn, stats, best[1], best[2])


def mahalanobis_ensemble_scores(fit: EnsembleFit, x, batch_size: int = 256) -> np.ndarray:
  """The fitted ensemble's score of every image of `x` (uint8 or [0, 1] floats)."""
  per_layer = map_batches(lambda xb: ensemble_layer_scores(
      fit.layer_fn, fit.stats, to_input(xb), epsilon=fit.epsilon), x, batch_size=batch_size,
      label="Mahalanobis ensemble")
  return np.asarray(mahalanobis_ensemble(fit.weights, per_layer))
