"""Where runs live and how a run is trained or reused.

A run is one model trained with one loss in one space (pixel: the named network on images;
feature: an MLP head on the natural network's features). Its directory is
  <workdir>/<dataset>/<model>/seed<seed>/<space>/<run name>/
holding `config.json` and orbax `checkpoints/`. `experiments.train`, `experiments.ncg` and
every later experiment find the same runs there.
"""
import dataclasses
import os

from ncg_jax import models
from ncg_jax.data import Split
from ncg_jax.train import losses
from ncg_jax.train.trainer import Trained, TrainConfig, train

SPACES = ("pixel", "feature")


def run_dir(workdir: str, dataset: str, model: str, seed: int, space: str, run: str) -> str:
  return os.path.join(workdir, dataset, model, f"seed{seed}", space, run)


def train_or_load(*, workdir: str, dataset: str, model_name: str, space: str, loss: str,
                  data: Split, num_classes: int, cfg: TrainConfig, attack=None,
                  log=print) -> Trained:
  cfg = dataclasses.replace(cfg, loss=loss)
  arch = model_name if space == "pixel" else "mlp"
  if attack is not None and space == "feature":
    attack = dataclasses.replace(attack, clip=None)  # features are unbounded
  directory = run_dir(workdir, dataset, model_name, cfg.seed, space,
                      losses.run_name(loss, attack))
  log(f"[{space}/{loss}] {arch} on {len(data)} examples -> {directory}")
  return train(models.create(arch, num_classes), data, cfg, directory, attack=attack, log=log)
