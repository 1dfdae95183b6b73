"""Where runs live and how a run is trained or reused.

A run is one model trained with one loss in one space (pixel: the named network on images;
feature: an MLP head on the natural network's features). Its directory is
  <workdir>/<dataset>/<model>/seed<seed>/<space>/<run name>/
(`<dataset>` is `data.dir_name(dataset)`: user datasets' paths become one directory name)
holding `config.json` and orbax `checkpoints/`. `experiments.train`, `experiments.ncg` and
every later experiment find the same runs there.
"""
import dataclasses
import glob
import json
import os

import jax.numpy as jnp

from ncg_jax import models
from ncg_jax.data import Split, dir_name
from ncg_jax.train import losses
from ncg_jax.train.trainer import Trained, TrainConfig, train

SPACES = ("pixel", "feature")


def run_dir(workdir: str, dataset: str, model: str, seed: int, space: str, run: str) -> str:
  return os.path.join(workdir, dir_name(dataset), model, f"seed{seed}", space, run)


def train_or_load(*, workdir: str, dataset: str, model_name: str, space: str, loss: str,
                  data: Split, num_classes: int, cfg: TrainConfig, attack=None,
                  log=print) -> Trained:
  cfg = dataclasses.replace(cfg, loss=loss)
  arch = model_name if space == "pixel" else "mlp"
  if attack is not None and space == "feature":
    attack = dataclasses.replace(attack, clip=None)  # features are unbounded
  name = (losses.run_name(loss, attack) + ("" if cfg.precision == "float32" else f"-{cfg.precision}")
          + ("-aug" if cfg.augment else ""))
  directory = run_dir(workdir, dataset, model_name, cfg.seed, space, name)
  log(f"[{space}/{loss}] {arch} on {len(data)} examples -> {directory}")
  model = models.create(arch, num_classes, dtype=jnp.dtype(cfg.precision))
  return train(model, data, cfg, directory, attack=attack,
               meta={"arch": arch, "space": space}, log=log)


def find(workdir: str, dataset: str, model_name: str, seed: int, space: str) -> dict[str, dict]:
  """The finished or interrupted runs of one space: {loss: config.json record}, in the
  order ce first, then by name."""
  found = {}
  for path in sorted(glob.glob(os.path.join(run_dir(workdir, dataset, model_name, seed, space, "*"),
                                            "config.json"))):
    with open(path) as f:
      record = json.load(f)
    if os.path.isdir(os.path.join(os.path.dirname(path), "checkpoints")):
      found[os.path.basename(os.path.dirname(path))] = record
  return dict(sorted(found.items(), key=lambda kv: (kv[1]["loss"] != "ce", kv[0])))


def load(record: dict, *, workdir: str, dataset: str, model_name: str, data: Split,
         num_classes: int, log=print) -> Trained:
  """Restores the run described by a `find` record (trains on if it was interrupted)."""
  fields = {f.name for f in dataclasses.fields(TrainConfig)}
  cfg = TrainConfig(**{k: tuple(v) if k == "milestones" else v
                       for k, v in record.items() if k in fields})
  attack = record.get("attack")
  attack = losses.AttackConfig(**{**attack, "clip": tuple(attack["clip"]) if attack["clip"] else None}) \
      if attack else None
  return train_or_load(workdir=workdir, dataset=dataset, model_name=model_name,
                       space=record.get("space", "pixel"), loss=record["loss"], data=data,
                       num_classes=num_classes, cfg=cfg, attack=attack, log=log)
