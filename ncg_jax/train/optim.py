"""Optimizers with the paper's piecewise-constant schedule (x0.1 at given epochs)."""
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
  return OPTIMIZERS.get(name, lr=schedule(lr, milestones, steps_per_epoch), momentum=momentum)
