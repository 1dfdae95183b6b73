"""OpenOOD's automatic parameter search (APS; `evaluation_api/evaluator.py::hyperparam_search`):
every point of a detector's grid (the Cartesian product of its value lists, in key order)
is scored on ID-validation and OOD-validation inputs and the highest AUROC wins (the first
point wins ties). Only then are the test sets scored, once: they never reach `search`.
Without OOD-validation inputs, or for a detector OpenOOD runs without APS, the grid's first
point (the default) is used.
"""
import itertools

from ncg_jax.detect import metrics
from ncg_jax.detect.registry import DETECTORS, Inputs, Model


def grid_points(grid: dict) -> list[dict]:
  keys = list(grid)
  return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def search(name: str, model: Model, val_id: Inputs | None, val_ood: Inputs | None):
  """Returns (fitted state, chosen hyperparameters, [(hyperparameters, val AUROC)])."""
  det = DETECTORS.get(name)
  state = det.fit(model)
  points = grid_points(det.grid(model))
  if len(points) <= 1 or not det.aps or val_id is None or val_ood is None:
    return state, (points[0] if points else {}), []
  scored = zip(det.score_points(state, val_id, points), det.score_points(state, val_ood, points))
  trace = [(hp, metrics.evaluate(s_id, s_ood)["auroc"])
           for hp, (s_id, s_ood) in zip(points, scored)]
  best = max(range(len(trace)), key=lambda i: (trace[i][1], -i))
  return state, trace[best][0], trace
