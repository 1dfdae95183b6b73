"""Optimizers with the paper's piecewise-constant schedule (x0.1 at given epochs)."""
import functools
from typing import Sequence

import optax

from ncg_jax.registry import Registry

OPTIMIZERS = Registry("optimizer")
OPTIMIZERS.register("sgd", lambda lr, momentum: optax.sgd(lr, momentum=momentum or None))
OPTIMIZERS.register("adam", lambda lr, momentum: optax.adam(lr))


def schedule(lr: float, milestones: Sequence[int], steps_per_epoch: int, gamma: float = 0.1):
  return optax.piecewise_constant_schedule(
      lr, {int(m) * steps_per_epoch: gamma for m in milestones})


def make_optimizer(name: str, lr: float, momentum: float, milestones: Sequence[int],
                   steps_per_epoch: int) -> optax.GradientTransformation:
  """One transformation object per setting, so that train steps built on it
  (`trainer.make_train_step`) are compiled once per process."""
  return _optimizer(name, lr, momentum, tuple(milestones), steps_per_epoch)


@functools.lru_cache(maxsize=None)
def _optimizer(name, lr, momentum, milestones, steps_per_epoch):
  return OPTIMIZERS.get(name, lr=schedule(lr, milestones, steps_per_epoch), momentum=momentum)
