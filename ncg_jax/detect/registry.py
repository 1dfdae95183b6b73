"""Detectors by name, each with its fit step, hyperparameter grid and what it needs.

A detector sees a `Model` (the network, its training split, and the ID-validation inputs
where the caller has them) and `Inputs` (one set of images whose logits, features and NAC
states are computed on first use, in one pass, and cached: each is computed once whatever
the number of detectors and grid points). The hyperparameter search is `ncg_jax.detect.aps`.

Fitting reads a bounded, class-balanced, seeded subset of the training split (`fit_max`
images; all of CIFAR, 50 per class of ImageNet-1k): OpenOOD fits on the whole training
split, which for ImageNet means 1.28M forward passes; KNN's authors used a 1% sample there.
"""
import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ncg_jax.batching import map_batches, take
from ncg_jax.detect import distances, gradients, nac, scores
from ncg_jax.functional import constants_notice
from ncg_jax.models.trained import Trained, logits_and_features, to_input
from ncg_jax.registry import Registry


@dataclasses.dataclass(frozen=True, eq=False)
class FunctionNetwork:
  """Any network as functions of float inputs: `logits_fn(x) -> [B, C]`,
  `features_fn(x) -> [B, D]`, and optionally the linear head ({"kernel": [D, C], "bias": [C]})
  that maps features to logits (detectors that reshape features need it)."""
  logits_fn: Callable
  features_fn: Callable
  head: dict | None = None

  @functools.cached_property
  def _both(self):
    for fn in (self.logits_fn, self.features_fn):  # compiled in with their arrays as constants
      constants_notice(fn)
    return jax.jit(lambda x: (self.logits_fn(x), self.features_fn(x)))

  def outputs(self, x, batch_size: int = 512):
    return map_batches(lambda xb: self._both(to_input(xb)), x, batch_size=batch_size,
                       label="logits, features and NAC states")


@dataclasses.dataclass(eq=False)
class Model:
  network: Trained | FunctionNetwork
  train_x: Any                 # uint8 images (array or LazyImages) or features
  train_y: np.ndarray
  num_classes: int
  input_std: float = 1.0       # ODIN's per-channel std (models here take raw [0, 1] input)
  nac_subset: int = 1000
  fit_max: int = 50000
  seed: int = 0
  arch: str = ""               # the `models` name (picks NAC's layers and grid)
  benchmark: str | None = None
  id_val: "Inputs | None" = None  # ReAct's threshold, KLM, TempScale; else the training subset

  @property
  def trained(self) -> Trained | None:
    return self.network if isinstance(self.network, Trained) else None

  @functools.cached_property
  def fit_index(self) -> np.ndarray:
    n = len(self.train_y)
    if n <= self.fit_max:
      return np.arange(n)
    return nac.balanced_subset(self.train_y, self.fit_max, self.num_classes, seed=self.seed)

  @functools.cached_property
  def train(self) -> "Inputs":
    idx = self.fit_index
    return Inputs(self, take(self.train_x, idx), self.train_y[idx])

  @property
  def val(self) -> "Inputs":
    """ID-validation inputs where given, else the training subset."""
    return self.id_val if self.id_val is not None else self.train

  @functools.cached_property
  def head(self) -> dict | None:
    if self.trained is not None:
      return self.trained.params.get("head")
    return self.network.head

  @functools.cached_property
  def perturbed_layers(self) -> tuple[str, ...]:
    """The Linen model's perturb points ("module/name" when nested)."""
    x = to_input(jnp.zeros((1, *self.train_x.shape[1:]), jnp.uint8))
    return nac.perturbed_layers(self.trained.model, x)

  @functools.cached_property
  def nac_setup(self) -> nac.Setup:
    return nac.setup(self.arch, self.benchmark, self.train_x.shape[1], self.perturbed_layers)

  @property
  def nac_layers(self) -> tuple[str, ...]:
    return tuple(self.nac_setup.layers.values())

  def outputs(self, x):
    if self.trained is not None:
      return logits_and_features(self.trained, x)
    return self.network.outputs(x)


@dataclasses.dataclass(eq=False)
class Inputs:
  model: Model
  x: Any                       # uint8 images (array or LazyImages) or float features
  labels: np.ndarray | None = None
  with_nac: bool = False       # compute NAC's pooled states in the same pass as the outputs

  def __len__(self) -> int:
    return len(self.x)

  @functools.cached_property
  def _outputs(self):
    if self.with_nac and self.model.trained is not None:
      pooled, logits, feats = self._nac_pass()
      self.__dict__["nac_pooled"] = pooled
      return logits, feats
    return self.model.outputs(self.x)

  def _nac_pass(self):
    t = self.model.trained
    fn = lambda xb: nac.pooled_outputs(t.model, t.variables(), to_input(xb), self.model.nac_layers)
    return map_batches(fn, self.x, batch_size=256)

  @property
  def logits(self) -> np.ndarray:
    return self._outputs[0]

  @property
  def features(self) -> np.ndarray:
    return self._outputs[1]

  @functools.cached_property
  def nac_pooled(self) -> dict:
    return self._nac_pass()[0]


@dataclasses.dataclass(frozen=True)
class Detector:
  name: str
  score: Callable[[Any, Inputs, dict], np.ndarray]  # (fitted state, inputs, hyperparams)
  fit: Callable[[Model], Any] = lambda model: None
  grid: Callable[[Model], dict] = lambda model: {}   # name -> candidate values (first = default)
  needs: tuple[str, ...] = ()  # "head": a linear head; "module": a Linen model (Trained)
  aps: bool = True             # False: OpenOOD runs it without a search; so does ncg_jax
  # (fitted state, inputs, [hyperparams]) -> [scores]: grid points scored in one pass that
  # shares their common work (ODIN: one gradient per temperature for all its epsilons)
  score_grid: Callable[[Any, Inputs, list[dict]], list[np.ndarray]] | None = None

  def score_points(self, state, inputs: Inputs, points: list[dict]) -> list[np.ndarray]:
    """The scores of `inputs` at each of `points`, as `score` gives them one by one."""
    if self.score_grid is not None:
      return self.score_grid(state, inputs, points)
    return [self.score(state, inputs, hp) for hp in points]

  def unavailable(self, model: Model) -> str | None:
    """Why this detector cannot score `model`, or None."""
    if "head" in self.needs and model.head is None:
      return "needs the network's linear head (pass head= to FunctionNetwork)"
    if "module" in self.needs and model.trained is None:
      return "needs a Linen model (a Trained), not plain functions"
    return None


DETECTORS = Registry("detector")


def _register(name: str, score, fit=None, grid=None, needs=(), aps=True, score_grid=None):
  det = Detector(name, score, fit or (lambda m: None), grid or (lambda m: {}), tuple(needs), aps,
                 score_grid)
  DETECTORS.register(name, lambda: det)


def _f32(a):
  return np.asarray(a, np.float32)


# ---- logits only ----
_register("msp", lambda st, s, hp: _f32(scores.msp(s.logits)), aps=False)
_register("max_logit", lambda st, s, hp: _f32(scores.max_logit(s.logits)), aps=False)
_register("energy", lambda st, s, hp: _f32(scores.energy(s.logits)), aps=False)
_register("entropy", lambda st, s, hp: _f32(scores.entropy(s.logits)), aps=False)


def _labels(inputs: Inputs) -> tuple[np.ndarray, np.ndarray]:
  """(logits, labels) of labelled inputs; unlabelled ones are labelled by the model."""
  y = inputs.labels if inputs.labels is not None and np.all(inputs.labels >= 0) \
      else inputs.logits.argmax(1)
  return inputs.logits, y


_register("temp_scale", lambda st, s, hp: _f32(scores.temp_scale(s.logits, st)),
          fit=lambda m: scores.fit_temperature(*_labels(m.val)), aps=False)
_register("gen", lambda st, s, hp: _f32(scores.gen(s.logits, hp["gamma"], hp["M"])),
          grid=lambda m: {"gamma": [0.1, 0.01, 0.5, 1.0, 2.0, 5.0, 10.0],  # M capped at C
                          "M": list(dict.fromkeys(min(v, m.num_classes)
                                                  for v in (100, 10, 50, 200, 500, 1000)))})
_register("klm", lambda st, s, hp: _f32(scores.klm(st, s.logits)),
          fit=lambda m: scores.fit_klm(m.val.logits), aps=False)


# ---- gradients through the network ----
def _odin_points(model: Model, s: Inputs, points: list[dict]) -> list[np.ndarray]:
  """ODIN at each of `points`, one pass over the inputs per temperature: the gradient's
  direction does not depend on epsilon (`gradients.odin` with a sequence of epsilons)."""
  fn = model.network.logits_fn() if model.trained is not None else model.network.logits_fn
  out = [None] * len(points)
  for t in dict.fromkeys(hp["temperature"] for hp in points):
    at = [i for i, hp in enumerate(points) if hp["temperature"] == t]
    eps = [points[i]["epsilon"] for i in at]
    rows = map_batches(lambda xb: gradients.odin(fn, to_input(xb), temperature=t, epsilon=eps,
                                                 input_std=model.input_std),
                       s.x, batch_size=256, label=f"ODIN (T={t:g}, {len(eps)} epsilon"
                       + ("s)" if len(eps) > 1 else ")"))
    for j, i in enumerate(at):
      out[i] = _f32(rows[:, j])
  return out


_register("odin", lambda st, s, hp: _odin_points(st, s, [hp])[0], fit=lambda m: m,
          grid=lambda m: {"temperature": [1000.0, 1.0, 10.0, 100.0], "epsilon": [0.0014, 0.0028]},
          score_grid=_odin_points)
_register("gradnorm", lambda st, s, hp: _f32(gradients.gradnorm_linear(st.head, s.features,
                                                                       include_bias=False)),
          fit=lambda m: m, needs=("head",), aps=False)


# ---- feature statistics ----
_register("mahalanobis", lambda st, s, hp: _f32(distances.mahalanobis(st, s.features)),
          fit=lambda m: distances.fit_mahalanobis(m.train.features, m.train.labels, m.num_classes),
          aps=False)
_register("rmds", lambda st, s, hp: _f32(distances.rmds(st, s.features)),
          fit=lambda m: distances.fit_rmds(m.train.features, m.train.labels, m.num_classes),
          aps=False)

def _ensemble_fit(m: Model) -> distances.EnsembleFit:
  """`distances.fit_mahalanobis_ensemble` on the training subset, with 1,000 seeded ID images
  (the ID-validation set where there is one, else the training subset) for its tuning."""
  t = m.trained
  layers = tuple(n for n in m.perturbed_layers if n != "features")
  fn = jax.tree_util.Partial(_layer_features_of(t.model, layers), t.variables())
  pool = m.val
  idx = np.sort(np.random.default_rng([m.seed, 3]).permutation(len(pool))[:1000])
  x = take(pool.x, idx)
  x = np.asarray(x[np.arange(len(x))]) if not isinstance(x, np.ndarray) else x
  _, y = _labels(pool)
  return distances.fit_mahalanobis_ensemble(fn, t.logits_fn(), m.train.x, m.train.labels,
                                            m.num_classes, x, y[idx])


@functools.lru_cache(maxsize=None)
def _layer_features_of(model, layers):
  return lambda variables, x: distances.layer_features(model, variables, x, layers)


def _ensemble(st: distances.EnsembleFit, s, hp):
  return _f32(distances.mahalanobis_ensemble_scores(st, s.x))


_register("mahalanobis_ensemble", _ensemble, fit=_ensemble_fit, needs=("module",), aps=False)


def _react(st, s, hp):
  model, val_features = st
  thr = scores.react_threshold(val_features, hp["percentile"])
  return _f32(scores.react(scores.linear_head, model.head, s.features, thr))


# OpenOOD: the percentile of the ID-validation activations (the paper: training activations)
_register("react", _react, fit=lambda m: (m, m.val.features), needs=("head",),
          grid=lambda m: {"percentile": [90, 85, 95, 99]})
_register("knn", lambda st, s, hp: _f32(distances.knn(st, s.features, k=hp["k"])),
          fit=lambda m: distances.fit_knn(m.train.features),
          grid=lambda m: {"k": [k for k in (50, 100, 200, 500, 1000) if k <= len(m.train)]
                          or [len(m.train)]})


def _vim_dims(m: Model) -> list[int]:
  d = m.train.features.shape[1]
  return [k for k in (256, 1000) if k < d] or [d // 2]  # OpenOOD's grid, guarded by D


class _PerValue:
  """A fitted state per hyperparameter value, fitted on first use."""

  def __init__(self, model: Model, fit: Callable):
    self.model, self._fit, self._cache = model, fit, {}

  def __getitem__(self, value):
    if value not in self._cache:
      self._cache[value] = self._fit(self.model, value)
    return self._cache[value]


_register("vim", lambda st, s, hp: _f32(scores.vim(st[hp["dim"]], scores.linear_head,
                                                   st.model.head, s.features)),
          fit=lambda m: _PerValue(m, lambda mm, d: scores.fit_vim(mm.train.features, mm.head, d)),
          grid=lambda m: {"dim": _vim_dims(m)}, needs=("head",))

_ASH_GRID = [90, 65, 70, 75, 80, 85, 95]
for _variant, _name in (("b", "ash"), ("p", "ash_p"), ("s", "ash_s")):
  _register(_name, functools.partial(
      lambda v, st, s, hp: _f32(scores.ash(scores.linear_head, st.head, s.features,
                                           hp["percentile"], v)), _variant),
            fit=lambda m: m, grid=lambda m: {"percentile": _ASH_GRID}, needs=("head",))
_register("scale", lambda st, s, hp: _f32(scores.scale(scores.linear_head, st.head, s.features,
                                                       hp["percentile"])),
          fit=lambda m: m, grid=lambda m: {"percentile": [85, 65, 70, 75, 80, 90, 95]},
          needs=("head",))
_register("dice", lambda st, s, hp: _f32(scores.dice(st[0].head, st[1][hp["percentile"]],
                                                     s.features)),
          fit=lambda m: (m, _PerValue(m, lambda mm, p: scores.dice_mask(mm.train.features, mm.head, p))),
          grid=lambda m: {"percentile": [90]}, needs=("head",), aps=False)
_register("she", lambda st, s, hp: _f32(scores.she(st, s.logits, s.features)),
          fit=lambda m: scores.fit_she(m.train.features, m.train.logits, m.train.labels,
                                       m.num_classes), aps=False)


def _fdbd_fit(m: Model):
  return m.head, scores.fdbd_denominators(m.head), m.train.features.mean(0)


_register("fdbd", lambda st, s, hp: _f32(scores.fdbd(st[0], st[1], s.features,
                                                     st[2] if hp["distance"] else None)),
          fit=_fdbd_fit, grid=lambda m: {"distance": [True, False]}, needs=("head",))
_register("nnguide", lambda st, s, hp: _f32(distances.nnguide(st, s.logits, s.features, hp["k"])),
          fit=lambda m: distances.fit_nnguide(m.train.features, m.train.logits, seed=m.seed),
          grid=lambda m: {"k": [k for k in (100, 1000) if k <= max(100, len(m.train) // 100)]})
_register("relation", lambda st, s, hp: _f32(distances.relation(st, s.logits, s.features,
                                                                hp["power"])),
          fit=lambda m: distances.fit_relation(m.train.features, m.train.logits),
          grid=lambda m: {"power": [8, 1, 2, 4, 6]})


# ---- NAC-UE ----
def _nac_fit(m: Model):
  y = m.train_y
  idx = nac.balanced_subset(y, m.nac_subset, m.num_classes, seed=1)
  return nac.Fitted(m.nac_setup, Inputs(m, take(m.train_x, idx)).nac_pooled)


_register("nac", lambda st, s, hp: _f32(st.score(hp, s.nac_pooled, s)), fit=_nac_fit,
          grid=lambda m: nac.grid(m.nac_setup), needs=("module",))


def score(name: str, state, inputs: Inputs, hp: dict) -> np.ndarray:
  return DETECTORS.get(name).score(state, inputs, hp)
