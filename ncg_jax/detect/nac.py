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

Pooling as the reference's `StatePooling`: maps [B, H, W, N] are summed over space, token
sequences [B, T, N] keep the class token (its ViT rule), vectors stay as they are.

Layers and search spaces (`setup`): the reference's configs
(`configs/postprocessors/nac/{resnet,vit}/nac_*.yml`, `BierOne/ood_coverage`), for ResNets on
CIFAR-10, CIFAR-100 and ImageNet (avgpool, layer3, layer2, layer1) and ViT-B/16 on ImageNet
(the final layer norm's class token and block 9-11's `ln_2`), each value list with the
config's default first. Other architectures get ncg_jax's own fallback (the penultimate
features and every other perturbed layer, alpha in {1, 0.01, 100}, O = M = 50); ImageNet-200
uses the ImageNet grid (the reference has no ImageNet-200 config).
"""
import dataclasses
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
  """{layer: (o, g)} pooled (`pool`), [B, N] each, from one forward and one VJP."""
  return _pooled(model, layers, variables, jnp.asarray(x, jnp.float32))[0]


def _flat(tree) -> dict:
  """Nested module collections as {"module/name": leaf}."""
  from flax import traverse_util
  return {"/".join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


def pool(a):
  """[B, H, W, N] -> spatial sum; [B, T, N] -> the class token; [B, N] unchanged."""
  if a.ndim == 4:
    return a.sum(axis=(1, 2))
  return a[:, 0] if a.ndim == 3 else a


def perturbed_layers(model: nn.Module, x) -> tuple[str, ...]:
  """The names ("module/name" when nested) of every `perturb` point of `model`."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  return tuple(sorted(_flat(shapes.get("perturbations", {}))))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _pooled(model, layers, variables, x):
  def loss(perturbations):
    (logits, feats), inter = model.apply({**variables, "perturbations": perturbations}, x,
                                         train=False, mutable=["intermediates"])
    c = logits.shape[-1]
    return -jnp.sum(jax.nn.log_softmax(logits)) / c, (inter["intermediates"], logits, feats)

  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))["perturbations"]
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, x.dtype), shapes)
  grads, (inter, logits, feats) = jax.grad(loss, has_aux=True)(zeros)
  inter, grads = _flat(inter), _flat(grads)
  states = {name: (pool(inter[name][0]), pool(grads[name])) for name in layers}
  return states, logits, feats


def pooled_outputs(model: nn.Module, variables: dict, x, layers: tuple[str, ...]):
  """(pooled states as `pooled_states`, logits, features) from the same forward pass."""
  return _pooled(model, layers, variables, jnp.asarray(x, jnp.float32))


def states(o, g, alpha: float) -> np.ndarray:
  """sigmoid(alpha o g) in float64 numpy (tanh form: no overflow). In numpy: a search
  visits many (alpha, M, O) settings and set sizes, each of which jit would compile anew."""
  x = alpha * np.asarray(o, np.float64) * np.asarray(g, np.float64)
  return 0.5 * (1.0 + np.tanh(0.5 * x))


def histogram(o, g, alpha: float, m: int) -> tuple[np.ndarray, np.ndarray]:
  """(the M edges, counts [M - 1, N] of training states per bin and neuron)."""
  t = edges(int(m))
  z = states(o, g, alpha)
  bins = np.searchsorted(t, z, side="right") - 1  # bin k holds [t_k, t_{k+1})
  counts = np.zeros((len(t) - 1, z.shape[1]))
  valid = (bins >= 0) & (bins < len(t) - 1)
  np.add.at(counts, (bins[valid], np.nonzero(valid)[1]), 1.0)
  return t, counts


def fit(pooled: dict, params: dict) -> dict:
  """params[layer] = {"alpha", "M", "O"}: per-layer coverage tables [M - 1, N]."""
  tables = {}
  for name, (o, g) in pooled.items():
    p = params[name]
    t, counts = histogram(o, g, p["alpha"], p["M"])
    tables[name] = {"edges": t, "coverage": np.minimum(counts / float(p["O"]), 1.0),
                    "alpha": float(p["alpha"])}
  return tables


def score(tables: dict, pooled: dict) -> np.ndarray:
  per_layer = []
  for name, tab in tables.items():
    z = states(*pooled[name], tab["alpha"])
    t, cov = tab["edges"], np.asarray(tab["coverage"], np.float32)
    bins = np.searchsorted(t, z, side="right") - 1
    inside = (bins >= 0) & (bins < cov.shape[0])
    gathered = np.take_along_axis(cov, np.clip(bins, 0, cov.shape[0] - 1), axis=0)
    per_layer.append(np.mean(np.where(inside, gathered, 0.0), axis=-1))
  return np.mean(np.stack(per_layer), axis=0).astype(np.float32)


def balanced_subset(labels, size: int, num_classes: int, seed: int = 1) -> np.ndarray:
  """A class-balanced sample of `size` indices (size // num_classes per class)."""
  rng = np.random.default_rng(seed)
  per = size // num_classes
  return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per]
                                 for c in range(num_classes)]))


@dataclasses.dataclass(frozen=True)
class Setup:
  """Which layers NAC reads (`layers`: the reference's name -> the model's perturb point)
  and the per-layer search space ({reference name: {"O", "M", "alpha": values}})."""
  layers: dict
  grid: dict
  source: str


_RESNET = {"avgpool": "features", "layer3": "layer3", "layer2": "layer2", "layer1": "layer1"}
_VIT = {"layer_norm": "features", **{f"layer_{i}": f"encoder_layer_{i}/ln_2_out" for i in (11, 10, 9)}}
# reference configs' sweeps, each list with the config's default first
_GRIDS = {
    ("resnet", "cifar10"): {
        "avgpool": {"O": [50, 10], "M": [50], "alpha": [100]},
        "layer3": {"O": [100], "M": [500, 50], "alpha": [1000, 5000]},
        "layer2": {"O": [5, 10], "M": [50], "alpha": [0.001]},
        "layer1": {"O": [100, 5, 10, 50], "M": [500, 50], "alpha": [0.001, 0.005]}},
    ("resnet", "cifar100"): {
        "avgpool": {"O": [50], "M": [50, 500], "alpha": [50, 1]},
        "layer3": {"O": [500], "M": [1000, 50, 500], "alpha": [10, 50, 100]},
        "layer2": {"O": [500, 100], "M": [50, 500], "alpha": [1]},
        "layer1": {"O": [5, 50], "M": [50], "alpha": [0.005]}},
    ("resnet", "imagenet"): {
        "avgpool": {"O": [10, 50, 500], "M": [50, 500], "alpha": [3000]},
        "layer3": {"O": [500, 100], "M": [50, 500], "alpha": [300, 50, 100]},
        "layer2": {"O": [50, 500], "M": [500], "alpha": [0.01]},
        "layer1": {"O": [5000], "M": [1000, 500], "alpha": [1, 0.1]}},
    ("vit", "imagenet"): {
        "layer_norm": {"O": [500], "M": [50, 500], "alpha": [100]},
        "layer_11": {"O": [50, 500], "M": [500, 50], "alpha": [1, 10]},
        "layer_10": {"O": [10, 50], "M": [500, 50], "alpha": [10]},
        "layer_9": {"O": [10, 50], "M": [1000, 500], "alpha": [1]}},
}


def setup(arch: str, benchmark: str | None, input_size: int, available: tuple[str, ...]) -> Setup:
  """The NAC setup for an architecture (`models` name) and benchmark (`cifar10`,
  `cifar100`, `imagenet200`, `imagenet`, or None: by input size, 32 -> CIFAR-10's and
  larger -> ImageNet's grid). `available`: the model's perturb points."""
  family = "vit" if arch.startswith("vit") else "resnet" if arch.startswith("resnet") else None
  if family is not None:
    data = {"imagenet200": "imagenet"}.get(benchmark, benchmark)
    if data not in ("cifar10", "cifar100", "imagenet"):
      data = "cifar10" if input_size <= 64 else "imagenet"
    key = (family, data)
    if key not in _GRIDS:  # ViT on CIFAR: no reference config
      key = (family, "imagenet")
    layers = _RESNET if family == "resnet" else _VIT
    if all(v in available for v in layers.values()):
      return Setup(layers, _GRIDS[key], f"ood_coverage nac/{family}/nac_{key[1]}.yml")
  names = ("features",) + tuple(n for n in available if n != "features") if "features" in available \
      else tuple(available)
  return Setup({n: n for n in names}, {n: {"O": [50], "M": [50], "alpha": [1.0, 0.01, 100.0]}
                                       for n in names}, "ncg_jax fallback")


class Fitted:
  """NAC fitted on pooled training states, with per-layer caches so that a search over the
  Cartesian product of per-layer settings costs one histogram per (layer, alpha, M) and one
  per-layer score per (inputs, layer, alpha, M, O)."""

  def __init__(self, setup: Setup, fit_pooled: dict):
    self.setup, self.fit_pooled = setup, fit_pooled
    self._tables, self._scores = {}, {}

  def table(self, name: str, alpha: float, m: int, o: float) -> dict:
    key = (name, alpha, m)
    if key not in self._tables:
      self._tables[key] = histogram(*self.fit_pooled[self.setup.layers[name]], alpha, m)
    t, counts = self._tables[key]
    return {"edges": t, "coverage": np.minimum(counts / float(o), 1.0), "alpha": float(alpha)}

  def layer_score(self, name: str, alpha: float, m: int, o: float, pooled: dict, key) -> np.ndarray:
    ck = (key, name, alpha, m, o)
    if ck not in self._scores:
      layer = self.setup.layers[name]
      self._scores[ck] = np.asarray(score({layer: self.table(name, alpha, m, o)}, {layer: pooled[layer]}))
    return self._scores[ck]

  def score(self, hp: dict, pooled: dict, key) -> np.ndarray:
    """Mean over the setup's layers; `hp` holds "<layer>_O", "<layer>_M", "<layer>_alpha"."""
    return np.mean([self.layer_score(n, hp[f"{n}_alpha"], hp[f"{n}_M"], hp[f"{n}_O"], pooled, key)
                    for n in self.setup.layers], axis=0)


def grid(setup: Setup) -> dict:
  return {f"{n}_{k}": list(v) for n, per in setup.grid.items() for k, v in per.items()}
