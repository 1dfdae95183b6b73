"""Detectors by name, each with its fit step and hyperparameter grid, and OpenOOD's
automatic parameter search (APS): every grid point is scored on ID-validation and
OOD-validation inputs, the highest AUROC wins (first wins ties), and only then are the test
sets scored, once. The test sets never reach `search`.

A detector sees a `Model` (the trained network and its training split) and `Inputs` (one
split whose logits, features and NAC states are computed on first use and cached, so each
is computed once whatever the number of detectors and grid points).
"""
import dataclasses
import functools
import itertools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ncg_jax.detect import distances, gradients, metrics, nac, scores
from ncg_jax.batching import map_batches
from ncg_jax.models import logits_and_features
from ncg_jax.registry import Registry
from ncg_jax.models.trained import Trained, to_input


@dataclasses.dataclass
class Model:
  trained: Trained
  train_x: np.ndarray          # uint8 images (or features) of the training split
  train_y: np.ndarray
  num_classes: int
  input_std: float = 1.0       # ODIN's per-channel std (models here take raw [0, 1] input)
  nac_subset: int = 1000
  seed: int = 0

  @functools.cached_property
  def head(self) -> dict:
    return self.trained.params["head"]

  @functools.cached_property
  def train(self) -> "Inputs":
    return Inputs(self, self.train_x)

  @functools.cached_property
  def nac_layers(self) -> tuple[str, ...]:
    x = to_input(jnp.asarray(self.train_x[:1]))
    shapes = jax.eval_shape(lambda: self.trained.model.init(jax.random.key(0), x))
    return tuple(sorted(shapes.get("perturbations", {})))


@dataclasses.dataclass
class Inputs:
  model: Model
  x: np.ndarray  # uint8 images or float features, as the model takes them

  @functools.cached_property
  def _outputs(self):
    return logits_and_features(self.model.trained, self.x)

  @property
  def logits(self) -> np.ndarray:
    return self._outputs[0]

  @property
  def features(self) -> np.ndarray:
    return self._outputs[1]

  @functools.cached_property
  def nac_pooled(self) -> dict:
    t = self.model.trained
    layers = self.model.nac_layers
    fn = lambda xb: nac.pooled_states(t.model, t.variables(), to_input(xb), layers)
    return map_batches(fn, self.x, batch_size=256)


@dataclasses.dataclass(frozen=True)
class Detector:
  name: str
  score: Callable[[Any, Inputs, dict], np.ndarray]  # (fitted state, inputs, hyperparams)
  fit: Callable[[Model], Any] = lambda model: None
  grid: Callable[[Model], dict] = lambda model: {}   # name -> candidate values (first = default)


DETECTORS = Registry("detector")


def _register(name: str, score, fit=None, grid=None):
  det = Detector(name, score, fit or (lambda m: None), grid or (lambda m: {}))
  DETECTORS.register(name, lambda: det)


def _f32(a):
  return np.asarray(a, np.float32)


_register("msp", lambda st, s, hp: _f32(scores.msp(s.logits)))
_register("max_logit", lambda st, s, hp: _f32(scores.max_logit(s.logits)))
_register("energy", lambda st, s, hp: _f32(scores.energy(s.logits)))


def _odin(model: Model, s: Inputs, hp: dict):
  fn = model.trained.logits_fn()
  return map_batches(lambda xb: gradients.odin(fn, to_input(xb), temperature=hp["temperature"],
                                               epsilon=hp["epsilon"], input_std=model.input_std),
                     s.x, batch_size=256)


_register("odin", lambda st, s, hp: _odin(st, s, hp), fit=lambda m: m,
          grid=lambda m: {"temperature": [1000.0, 1.0, 10.0, 100.0], "epsilon": [0.0014, 0.0028]})
_register("gradnorm", lambda st, s, hp: _f32(gradients.gradnorm_linear(st.head, s.features,
                                                                       include_bias=False)),
          fit=lambda m: m)
_register("mahalanobis",
          lambda st, s, hp: _f32(distances.mahalanobis(st, s.features)),
          fit=lambda m: distances.fit_mahalanobis(m.train.features, m.train_y, m.num_classes))


def _ensemble_fit(m: Model):
  """Lee et al.'s layer ensemble: per-layer class statistics on the training split; the
  layer weights from logistic regression on a training subset vs its FGSM-perturbed copies
  (x + 0.05 sign(grad CE), clipped), as the GradNorm repository's tuning script; no
  validation or test OOD data is used."""
  t = m.trained
  layers = m.nac_layers
  fn = _layer_fn(t, layers)
  train_feats = map_batches(lambda xb: fn(to_input(xb)), m.train_x, batch_size=256)
  stats = {name: distances.fit_mahalanobis(train_feats[name], m.train_y, m.num_classes)
           for name in layers}
  idx = nac.balanced_subset(m.train_y, min(500, len(m.train_y)), m.num_classes, seed=2)
  x = to_input(jnp.asarray(m.train_x[idx]))
  logits_fn = t.logits_fn()
  y = jnp.asarray(m.train_y[idx])
  g = jax.grad(lambda xx: jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits_fn(xx), y)))(x)
  x_adv = jnp.clip(x + 0.05 * jnp.sign(g), 0.0, 1.0)
  s_id = np.asarray(distances.ensemble_layer_scores(fn, stats, x))
  s_adv = np.asarray(distances.ensemble_layer_scores(fn, stats, x_adv))
  return fn, stats, distances.fit_ensemble_weights(s_id, s_adv)


def _layer_fn(t: Trained, layers):
  return jax.tree_util.Partial(_layer_features_of(t.model, layers), t.variables())


@functools.lru_cache(maxsize=None)
def _layer_features_of(model, layers):
  return lambda variables, x: distances.layer_features(model, variables, x, layers)


def _ensemble(st, s, hp):
  fn, stats, weights = st
  per_layer = map_batches(lambda xb: distances.ensemble_layer_scores(
      fn, stats, to_input(xb), epsilon=hp["epsilon"]), s.x, batch_size=256)
  return _f32(distances.mahalanobis_ensemble(weights, per_layer))


_register("mahalanobis_ensemble", _ensemble, fit=_ensemble_fit,
          grid=lambda m: {"epsilon": [0.0, 0.0005, 0.001, 0.0014, 0.002, 0.005, 0.01]})


def _react(st, s, hp):
  model, train_features = st
  thr = scores.react_threshold(train_features, hp["percentile"])
  return _f32(scores.react(scores.linear_head, model.head, s.features, thr))


_register("react", _react, fit=lambda m: (m, m.train.features),
          grid=lambda m: {"percentile": [90, 85, 95, 99]})
_register("knn", lambda st, s, hp: _f32(distances.knn(st, s.features, k=hp["k"])),
          fit=lambda m: distances.fit_knn(m.train.features),
          grid=lambda m: {"k": [k for k in (50, 100, 200, 500, 1000) if k <= len(m.train_y)]})


def _vim_dims(m: Model) -> list[int]:
  d = m.train.features.shape[1]
  return [k for k in (256, 1000) if k < d] or [d // 2]  # OpenOOD's grid, guarded by D


def _vim(st, s, hp):
  model, cache = st
  if hp["dim"] not in cache:
    cache[hp["dim"]] = scores.fit_vim(model.train.features, model.head, hp["dim"])
  return _f32(scores.vim(cache[hp["dim"]], scores.linear_head, model.head, s.features))


_register("vim", _vim, fit=lambda m: (m, {}), grid=lambda m: {"dim": _vim_dims(m)})
_register("ash", lambda st, s, hp: _f32(scores.ash(scores.linear_head, st.head, s.features,
                                                   hp["percentile"])),
          fit=lambda m: m, grid=lambda m: {"percentile": [90, 65, 70, 75, 80, 85, 95]})


def _nac_fit(m: Model):
  idx = nac.balanced_subset(m.train_y, m.nac_subset, m.num_classes, seed=1)
  return m, Inputs(m, m.train_x[idx]).nac_pooled


def _nac_grid(m: Model) -> dict:
  grid = {"O": [50, 5], "M": [50]}
  for layer in m.nac_layers:
    grid[f"alpha_{layer}"] = [1.0, 0.01, 100.0]
  return grid


def _nac(st, s, hp):
  model, fit_pooled = st
  params = {layer: {"alpha": hp[f"alpha_{layer}"], "M": hp["M"], "O": hp["O"]}
            for layer in model.nac_layers}
  return _f32(nac.score(nac.fit(fit_pooled, params), s.nac_pooled))


_register("nac", _nac, fit=_nac_fit, grid=_nac_grid)


def grid_points(grid: dict) -> list[dict]:
  keys = list(grid)
  return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def search(name: str, model: Model, val_id: Inputs, val_ood: Inputs):
  """APS: returns (fitted state, best hyperparameters, [(hyperparameters, val AUROC)])."""
  det = DETECTORS.get(name)
  state = det.fit(model)
  points = grid_points(det.grid(model))
  if len(points) <= 1:
    return state, (points[0] if points else {}), []
  trace = []
  for hp in points:
    auroc = metrics.evaluate(det.score(state, val_id, hp), det.score(state, val_ood, hp))["auroc"]
    trace.append((hp, auroc))
  best = max(range(len(trace)), key=lambda i: (trace[i][1], -i))
  return state, trace[best][0], trace


def score(name: str, state, inputs: Inputs, hp: dict) -> np.ndarray:
  return DETECTORS.get(name).score(state, inputs, hp)
