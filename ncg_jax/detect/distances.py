"""Feature-space detectors: Mahalanobis (with Lee et al.'s input preprocessing) and KNN.

Mahalanobis (Lee et al., NeurIPS 2018), as OpenOOD's MDS: class means and one tied
covariance of the class-centred training features (maximum likelihood, divided by N),
pseudo-inverse precision; score = max_c -(h - mu_c)^T P (h - mu_c). Evaluated through
h^T P h - 2 h^T P mu_c + mu_c^T P mu_c, O(B D^2 + B D C), never a [B, B] product.

KNN (Sun et al., ICML 2022): features L2-normalised; score = minus the L2 distance to the
k-th nearest normalised training feature, searched with `ncg_jax.neighbors`.
"""
import jax
import jax.numpy as jnp
import numpy as np

from ncg_jax import neighbors
from ncg_jax.functional import as_partial


def fit_mahalanobis(features, labels, num_classes: int) -> dict:
  h = np.asarray(features, np.float64)
  y = np.asarray(labels)
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


@jax.jit
def _mahalanobis_preprocessed(features_fn, stats, x, epsilon):
  def closest(xx):
    return jnp.sum(jnp.min(mahalanobis_distances(stats, features_fn(xx)), axis=-1))
  g = jax.grad(closest)(x)
  return mahalanobis(stats, features_fn(x - epsilon * jnp.where(g >= 0, 1.0, -1.0)))


def mahalanobis_preprocessed(features_fn, stats, x, *, epsilon: float = 0.0014):
  """Lee et al.'s input preprocessing: step x by epsilon against the gradient sign of the
  distance to the closest class Gaussian, then score the perturbed input's features."""
  return _mahalanobis_preprocessed(as_partial(features_fn), stats, jnp.asarray(x, jnp.float32),
                                   jnp.float32(epsilon))


def _normalize(h) -> np.ndarray:
  h = np.asarray(h, np.float32)
  return h / (np.linalg.norm(h, axis=-1, keepdims=True) + 1e-10)


def fit_knn(train_features) -> np.ndarray:
  """The bank of L2-normalised training features."""
  return _normalize(train_features)


def knn(index, features, k: int = 50, backend: str = "auto"):
  dist, _ = neighbors.nearest(index, _normalize(features), k=k, backend=backend)
  return -dist[:, k - 1]


def layer_features(model, variables, x, layers: tuple[str, ...]):
  """{layer: [B, C]} spatial means of the named intermediates (Lee et al.'s feature maps)."""
  _, inter = model.apply(variables, x, train=False, mutable=["intermediates"])
  pool = lambda a: a.reshape(a.shape[0], -1, a.shape[-1]).mean(axis=1)
  return {name: pool(inter["intermediates"][name][0]) for name in layers}


@jax.jit
def _ensemble_layer_scores(features_fn, stats, x, epsilon):
  """[B, L]: per layer, input preprocessing against that layer's closest class, then its
  Mahalanobis score (one VJP and one forward per layer, as Lee et al.)."""
  cols = []
  for name in sorted(stats):
    def closest(xx, name=name):
      return jnp.sum(jnp.min(mahalanobis_distances(stats[name], features_fn(xx)[name]), axis=-1))
    g = jax.grad(closest)(x)
    x2 = x - epsilon * jnp.where(g >= 0, 1.0, -1.0)
    cols.append(mahalanobis(stats[name], features_fn(x2)[name]))
  return jnp.stack(cols, axis=1)


def ensemble_layer_scores(features_fn, stats: dict, x, *, epsilon: float = 0.0):
  """Per-layer preprocessed Mahalanobis scores [B, L] (layers in sorted order);
  `features_fn(x) -> {layer: [B, C]}`."""
  return _ensemble_layer_scores(as_partial(features_fn), stats, jnp.asarray(x, jnp.float32),
                                jnp.float32(epsilon))


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
