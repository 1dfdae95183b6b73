"""Every detector on one network, one ID test set and any OOD sets: search on validation
inputs (`aps.search`), score the test sets once, and return a tidy table.

    from ncg_jax import detect
    result = detect.evaluate(trained, (x_train, y_train), x_test, {"svhn": x_svhn},
                             id_val=x_val, ood_val=x_tin_val)
    result.rows           # one dict per detector x OOD set x metric
    result.scores["knn"]  # {"id": [N], "svhn": [M]} per-example scores
    result.to_csv("detect.csv")

`network` is a `Trained` (any trained, imported or `models.create`d model with variables),
a `FunctionNetwork(logits_fn, features_fn, head=None)`, or a tuple of those arguments.
Image arguments are uint8 arrays [N, H, W, C] (or `data.imagesets.LazyImages`).
"""
import csv
import dataclasses
import io
import time

import numpy as np

from ncg_jax import sharding
from ncg_jax.detect import metrics
from ncg_jax.detect.aps import search
from ncg_jax.detect.registry import DETECTORS, FunctionNetwork, Inputs, Model, score
from ncg_jax.models.trained import Trained
from ncg_jax.registry import ConfigError

METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95_openood", "fpr95", "detection_error")
METRIC_NOTES = {
    "fpr95_openood": "FPR95, OOD positive (OpenOOD v1.5): share of ID rejected at 95% OOD recall",
    "fpr95": "FPR95, ID positive (ODIN, GradNorm): share of OOD accepted at 95% ID recall",
}


@dataclasses.dataclass
class Evaluation:
  rows: list[dict]                       # {"detector", "ood_set", "metric", "value"}
  scores: dict[str, dict[str, np.ndarray]]  # detector -> {"id": ..., <set>: ...}
  hyperparameters: dict[str, dict]       # detector -> chosen values
  search: dict[str, list]                # detector -> [(values, validation AUROC)]
  skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # detector -> why

  def value(self, detector: str, ood_set: str, metric: str) -> float:
    return next(r["value"] for r in self.rows if (r["detector"], r["ood_set"], r["metric"])
                == (detector, ood_set, metric))

  def to_csv(self, path: str | None = None) -> str:
    text = rows_to_csv(self.rows)
    if path:
      sharding.write_text(path, text)
    return text


def rows_to_csv(rows: list[dict]) -> str:
  out = io.StringIO()
  if rows:
    w = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
  return out.getvalue()


def run_detectors(model: Model, id_test: Inputs, ood: dict[str, Inputs], detectors,
                  id_val: Inputs | None = None, ood_val: Inputs | dict | None = None,
                  log=None) -> Evaluation:
  """The search and test scoring for `detectors` (names) on a built `Model`. `ood_val` is
  one validation set (OpenOOD) or {OOD set: its own validation inputs} (ODIN's protocol:
  each set's hyperparameters tuned on held-out images of that set)."""
  model.id_val = id_val
  rows, all_scores, chosen, traces = [], {}, {}, {}
  for det in detectors:
    t0 = time.perf_counter()
    per_set = ood_val if isinstance(ood_val, dict) else {name: ood_val for name in ood}
    fitted = {}
    all_scores[det] = {}
    for name, inputs in ood.items():
      v = per_set.get(name)
      if id(v) not in fitted:
        fitted[id(v)] = search(det, model, id_val, v)
      state, hp, trace = fitted[id(v)]
      id_key = f"id@{name}" if isinstance(ood_val, dict) else "id"
      if id_key not in all_scores[det]:  # per-set tuning: the ID scores of each set's choice
        all_scores[det][id_key] = score(det, state, id_test, hp)
      s_id = all_scores[det][id_key]
      s_ood = score(det, state, inputs, hp)
      all_scores[det][name] = s_ood
      for metric, value in metrics.evaluate(s_id, s_ood).items():
        rows.append({"detector": det, "ood_set": name, "metric": metric, "value": value})
      key = det if not isinstance(ood_val, dict) else f"{det}@{name}"
      chosen[key], traces[key] = hp, [(h, a) for h, a in trace]
    if log:
      hp = chosen.get(det, {})
      log(f"{det}: {', '.join(f'{k} {v:g}' for k, v in hp.items()) or 'no search'}"
          f" ({max(len(t) for k, t in traces.items() if k.split('@')[0] == det) or 1} grid"
          f" points, {time.perf_counter() - t0:.1f}s)")
  return Evaluation(rows, all_scores, chosen, traces)


def evaluate(network, train, id_test, ood: dict, *, id_val=None, ood_val=None,
             detectors=None, num_classes: int | None = None, arch: str = "",
             benchmark: str | None = None, seed: int = 0, fit_max: int = 50000,
             log=None) -> Evaluation:
  """Every detector in `detectors` (default: all that apply to `network`) on `id_test` vs
  each `ood` set, searched on (`id_val`, `ood_val`) where both are given (else defaults).
  `train` = (images, labels) for fitting; `id_val` images or (images, labels)."""
  if isinstance(network, tuple):
    network = FunctionNetwork(*network)
  if not isinstance(network, (Trained, FunctionNetwork)):
    raise ConfigError("network must be a Trained, a FunctionNetwork or (logits_fn, features_fn[, head])")
  x_train, y_train = train
  y_train = np.asarray(y_train)
  k = num_classes or int(y_train.max()) + 1
  model = Model(network, x_train, y_train, k, seed=seed, arch=arch, benchmark=benchmark,
                fit_max=fit_max)
  skipped = {}
  if detectors is None:
    detectors = []
    for name in DETECTORS.names():
      why = DETECTORS.get(name).unavailable(model)
      if why:
        skipped[name] = why
      else:
        detectors.append(name)
  else:
    for name in detectors:
      why = DETECTORS.get(name).unavailable(model)
      if why:
        raise ConfigError(f"detector {name} {why}")
  with_nac = "nac" in detectors
  labelled = lambda v: Inputs(model, *v, with_nac=with_nac) if isinstance(v, tuple) \
      else Inputs(model, v, with_nac=with_nac)
  result = run_detectors(model, labelled(id_test), {n: labelled(v) for n, v in ood.items()},
                         list(detectors), None if id_val is None else labelled(id_val),
                         None if ood_val is None else labelled(ood_val), log)
  result.skipped = skipped
  return result
