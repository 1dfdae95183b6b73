"""The spaces NCG is measured in and the models each needs (pixel space: the classifiers
trained with each loss or imported; feature space: MLP heads per loss on a network's
features), shared by `experiments.ncg` and `experiments.corrupted`.

`build_spaces(cfg, ...)` reads from `cfg` (an `experiments.common.ExperimentConfig` or any
object with these fields): runs, feature_runs (`RunSpec`s), workdir, dataset, model, pixel
and feature (`TrainConfig`s), feature_network, feature_layer, feature_width.
"""
import dataclasses
import time
from typing import Callable

import numpy as np

from ncg_jax import data, models, runs
from ncg_jax.models import Trained, logits_and_features
from ncg_jax.registry import ConfigError
from ncg_jax.train.losses import AttackConfig


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One classifier of an experiment: a registered loss with its attack (robust losses), or
  an imported run's name (attack None)."""
  loss: str
  attack: AttackConfig | None = None

  @property
  def name(self) -> str:
    """Its label and directory name: the loss, plus norm and eps for robust losses."""
    from ncg_jax.train import losses
    return losses.run_name(self.loss, self.attack) if self.loss in losses.LOSSES else self.loss


def pixels(x: np.ndarray) -> np.ndarray:
  return x.reshape(len(x), -1).astype(np.float32) / 255.0


@dataclasses.dataclass
class Space:
  """One space NCG is measured in: the training vectors neighbours are searched among, how
  images become query vectors, and the classifiers (by run label) whose predictions are
  scored, with the run specs that trained them."""
  name: str
  db: np.ndarray
  embed: Callable[[np.ndarray], np.ndarray]  # uint8 images -> query vectors
  models: dict[str, Trained]
  specs: dict[str, RunSpec]
  layer: str | None = None  # feature space: the intermediate of the feature network

  def inputs(self, x: np.ndarray, queries: np.ndarray | None = None) -> np.ndarray:
    """What the classifiers take: images (pixel space) or their embedding."""
    return x if self.name == "pixel" else (self.embed(x) if queries is None else queries)

  def predict(self, run: str, x: np.ndarray, queries: np.ndarray | None = None) -> np.ndarray:
    """Predicted labels of images x (feature space takes the already embedded `queries`)."""
    return logits_and_features(self.models[run], self.inputs(x, queries))[0].argmax(-1)


def _spec(cfg, label: str) -> RunSpec:
  """The run named `label` (a run label, a loss of --losses, or the natural loss)."""
  for r in cfg.runs:
    if label in (r.name, r.loss):
      return r
  return RunSpec(label)


def build_spaces(cfg, train: data.Split, num_classes: int,
                 spaces: tuple[str, ...], log=print) -> dict[str, Space]:
  """Trains (or reuses, or loads imported) every model the spaces need: pixel-space
  classifiers per run and, for feature space, MLP heads per loss on the `feature_layer`
  features of `cfg.feature_network` (heads on another network or layer live in
  `runs.feature_space_dir`)."""
  train_kw = dict(workdir=cfg.workdir, dataset=cfg.dataset, model_name=cfg.model,
                  num_classes=num_classes, log=log)
  net = _spec(cfg, cfg.feature_network)
  needed = ([net] if "feature" in spaces else []) + (list(cfg.runs) if "pixel" in spaces else [])
  pixel = {}
  for spec in needed:
    if spec.name not in pixel:
      pixel[spec.name] = runs.train_or_load(space="pixel", loss=spec.loss, attack=spec.attack,
                                            data=train, cfg=cfg.pixel, **train_kw)
  out = {}
  if "pixel" in spaces:
    out["pixel"] = Space("pixel", pixels(train.x), pixels,
                         {r.name: pixel[r.name] for r in cfg.runs}, {r.name: r for r in cfg.runs})
  if "feature" in spaces:
    default = models.feature_layer(cfg.model)
    layer = cfg.feature_layer or default
    natural = pixel[net.name]
    try:
      models.embed(natural, train.x[:1], layer)
    except KeyError as e:
      raise ConfigError(f"--feature_layer: {e.args[0]}") from None
    embed = lambda x, natural=natural: models.embed(natural, x, layer)
    t0 = time.perf_counter()
    db = embed(train.x)
    log(f"[feature] {db.shape[1]}-d '{layer}' features of {net.name} for {len(db)} training "
        f"images ({time.perf_counter() - t0:.1f}s)")
    where = runs.feature_space_dir(net.name, layer, default)
    fields = {} if cfg.feature_width == 256 else {"widths": (cfg.feature_width,) * 3}
    heads = {r.name: runs.train_or_load(space=where, loss=r.loss, attack=r.attack,
                                        data=data.Split(db, train.y), cfg=cfg.feature,
                                        fields=fields, **train_kw) for r in cfg.feature_runs}
    out["feature"] = Space("feature", db, embed, heads, {r.name: r for r in cfg.feature_runs},
                           layer)
  return out
