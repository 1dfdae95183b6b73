"""The main job: NCG in pixel and feature space for every loss.

python -m experiments.ncg --dataset=digitswo9 --model=cnn002 [--losses=ce] [--space=both]

For each loss it trains (or reuses) the pixel-space network and, in feature space, an MLP
head on the natural (`ce`) network's penultimate features; finds every OOD and ID-test
input's nearest training input (exact L2); and writes to <workdir>/<dataset>/<model>/seed<s>/:
results.json, ncg_table.md, ncg_<space>_<run>.npz and ncg_vs_distance.png.
"""
import dataclasses
import os
import time
from typing import Callable

import numpy as np
from absl import flags

from experiments import common
from ncg_jax import data, ncg, neighbors, plots, runs, sharding
from ncg_jax.models import logits_and_features
from ncg_jax.models import Trained

flags.DEFINE_enum("space", "both", ["pixel", "feature", "both"], "Where to search neighbours.")
FLAGS = flags.FLAGS

NATURAL = "ce"


def _pixels(x: np.ndarray) -> np.ndarray:
  return x.reshape(len(x), -1).astype(np.float32) / 255.0


def table(results: dict) -> str:
  rows = ["| space | run | test acc | NCG (OOD) | χ² p (1/K) | chance (class freq) | χ² p (class freq) | ID NCG | mean NN dist |",
          "|---|---|---|---|---|---|---|---|---|"]
  for space, by_run in results["spaces"].items():
    for run, r in by_run.items():
      o = r["ood"]
      rows.append(
          f"| {space} | {run} | {r['test_accuracy']:.3f} | {o['ncg']:.3f} | "
          f"{o['chisquare_uniform']['pvalue']:.2e} | {o['chisquare_class_frequency']['chance_match_rate']:.3f} | "
          f"{o['chisquare_class_frequency']['pvalue']:.2e} | {r['id']['ncg']:.3f} | {o['mean_nn_dist']:.3f} |")
  runs_ = list(dict.fromkeys(r for by_run in results["spaces"].values() for r in by_run))
  if NATURAL in runs_ and len(runs_) > 1:  # natural vs robust, side by side
    rows += ["", "| space | " + " | ".join(f"NCG {r}" for r in runs_) + " | "
             + " | ".join(f"{r} - {NATURAL}" for r in runs_ if r != NATURAL) + " |",
             "|---|" + "---|" * (2 * len(runs_) - 1)]
    for space, by_run in results["spaces"].items():
      ncgs = {r: by_run[r]["ood"]["ncg"] for r in runs_ if r in by_run}
      if NATURAL not in ncgs:
        continue
      rows.append(f"| {space} | " + " | ".join(f"{ncgs[r]:.3f}" if r in ncgs else "-" for r in runs_)
                  + " | " + " | ".join(f"{ncgs[r] - ncgs[NATURAL]:+.3f}" if r in ncgs else "-"
                                       for r in runs_ if r != NATURAL) + " |")
  return "\n".join(rows)


@dataclasses.dataclass
class Space:
  """One space NCG is measured in: the training vectors neighbours are searched among, how
  images become query vectors, and the models (by loss) whose predictions are scored."""
  name: str
  db: np.ndarray
  embed: Callable[[np.ndarray], np.ndarray]  # uint8 images -> query vectors
  models: dict[str, Trained]

  def predict(self, loss: str, x: np.ndarray, queries: np.ndarray | None = None) -> np.ndarray:
    """Predicted labels of images x (feature space takes the already embedded `queries`)."""
    inputs = x if self.name == "pixel" else (self.embed(x) if queries is None else queries)
    return logits_and_features(self.models[loss], inputs)[0].argmax(-1)


def build_spaces(cfg: common.ExperimentConfig, train: data.Split, num_classes: int,
                 spaces: tuple[str, ...], log=print) -> dict[str, Space]:
  """Trains (or reuses, or loads imported) every model the spaces need: pixel-space
  classifiers per loss or imported run and, for feature space, MLP heads per loss on the
  penultimate features of `cfg.feature_network` (the natural network by default; heads on
  another run's features live in `feature-<run>/`)."""
  train_kw = dict(workdir=cfg.workdir, dataset=cfg.dataset, model_name=cfg.model,
                  num_classes=num_classes, attack=cfg.attack, log=log)
  net = cfg.feature_network
  pixel_runs = {loss: runs.train_or_load(space="pixel", loss=loss, data=train,
                                         cfg=cfg.pixel, **train_kw)
                for loss in dict.fromkeys(([net] if "feature" in spaces else []) +
                                          (list(cfg.losses) if "pixel" in spaces else []))}
  out = {}
  for space in spaces:
    if space == "pixel":
      out[space] = Space(space, _pixels(train.x), _pixels,
                         {k: v for k, v in pixel_runs.items() if k in cfg.losses})
    else:
      natural = pixel_runs[net]
      embed = lambda x, natural=natural: logits_and_features(natural, x)[1]
      db = embed(train.x)
      where = space if net == NATURAL else f"{space}-{net}"
      models = {loss: runs.train_or_load(space=where, loss=loss, data=data.Split(db, train.y),
                                         cfg=cfg.feature, **train_kw) for loss in cfg.feature_losses}
      out[space] = Space(space, db, embed, models)
  return out


def run(cfg: common.ExperimentConfig, spaces: tuple[str, ...], log=print) -> dict:
  t_start = time.perf_counter()
  ds = common.load_heldout(cfg)
  out_dir = common.results_dir(cfg)
  log(f"{cfg.dataset}: {len(ds.train)} train, {len(ds.test)} test, {len(ds.ood)} OOD "
      f"(class {ds.held_out}), K={ds.num_classes}")
  built = build_spaces(cfg, ds.train, ds.num_classes, spaces, log)
  results = {"flags": cfg.flags, "versions": common.versions(),
             "dataset": {"name": ds.name, "held_out": ds.held_out, "num_classes": ds.num_classes,
                         "train": len(ds.train), "test": len(ds.test), "ood": len(ds.ood),
                         "label_map": "new = old if old < k else old - 1"},
             "nn_backend": neighbors.resolve_backend(cfg.nn_backend),
             "feature_network": cfg.feature_network, "spaces": {}}
  curves = {}
  for space, sp in built.items():
    test_q, ood_q = sp.embed(ds.test.x), sp.embed(ds.ood.x)
    t0 = time.perf_counter()
    ood_dist, ood_idx = neighbors.nearest(sp.db, ood_q, k=1, backend=cfg.nn_backend)
    _, test_idx = neighbors.nearest(sp.db, test_q, k=1, backend=cfg.nn_backend)
    ood_nn_y, test_nn_y = ds.train.y[ood_idx[:, 0]], ds.train.y[test_idx[:, 0]]
    log(f"[{space}] nearest neighbours of {len(ood_q)} OOD and {len(test_q)} test inputs "
        f"among {len(sp.db)} ({time.perf_counter() - t0:.1f}s)")
    results["spaces"][space], curves[space] = {}, {}
    for loss in sp.models:
      ood_pred = sp.predict(loss, ds.ood.x, ood_q)
      test_pred = sp.predict(loss, ds.test.x, test_q)
      summary = ncg.summarize(ood_pred, ood_nn_y, ood_dist[:, 0], ds.num_classes)
      results["spaces"][space][loss] = {
          "test_accuracy": float(np.mean(test_pred == ds.test.y)),
          "ood": summary,
          "id": {"ncg": ncg.ncg_score(test_pred, test_nn_y)},
      }
      curves[space][loss] = summary["ncg_vs_distance"]
      os.makedirs(out_dir, exist_ok=True)
      if sharding.is_writer():
        np.savez_compressed(
            os.path.join(out_dir, f"ncg_{space}_{loss}.npz"),
            train_x=ds.train.x if space == "pixel" else sp.db, train_y=ds.train.y,
            ood_x=ds.ood.x if space == "pixel" else ood_q, ood_y_original=ds.ood.y,
            ood_pred=ood_pred, nn_index=ood_idx[:, 0], nn_dist=ood_dist[:, 0],
            test_pred=test_pred, test_nn_index=test_idx[:, 0])
  results["seconds"] = time.perf_counter() - t_start
  md = table(results)
  common.write_json(os.path.join(out_dir, "results.json"), results)
  common.write_markdown(os.path.join(out_dir, "ncg_table.md"),
                        f"NCG on {cfg.dataset} ({cfg.model}, seed {cfg.seed})", md)
  plots.ncg_vs_distance(curves, os.path.join(out_dir, "ncg_vs_distance.png"),
                        f"{cfg.dataset}, {cfg.model}")
  log("\n" + md + f"\n\nwrote {out_dir}/{{results.json, ncg_table.md, ncg_vs_distance.png, *.npz}}")
  return results


def main(argv):
  del argv
  spaces = runs.SPACES if FLAGS.space == "both" else (FLAGS.space,)
  run(common.config_from_flags(), spaces)


if __name__ == "__main__":
  common.run(main)
