"""NCG on corrupted data (the NCG paper's Table 4).

python -m experiments.corrupted --dataset=digits --model=cnn002      # built-in corruptions
python -m experiments.corrupted --dataset=cifar10-c --model=wrn_40_10  # TFDS cifar10_corrupted

Models are trained (or reused) on every class of the clean dataset (`cifar10-c` trains on
`cifar10`; `<base>wo<k>` also works and drops class k). For each corruption x severity cell
the corrupted test images' nearest training images are found in pixel and feature space
(as experiments.ncg), and for every loss it records NCG, accuracy, and accuracy where NCG
holds vs where it fails with the paper's one-sided Welch t-test. Each robust loss is compared
with the natural one (`ce`) by the difference and ratio of NCG, mean +- SEM over cells, and
per corruption by the slope of NCG over severity (`ncg.slope_vs_severity`: linregress, then
ttest_ind_from_stats); the Pearson r of cells' mean neighbour distance and accuracy is given
per run.
Writes corrupted.json, corrupted.md and corrupted_ncg_vs_severity.png beside the runs.
"""
import dataclasses
import os
import time

import numpy as np
from absl import flags

from experiments import common
from ncg_jax import data, ncg, neighbors, plots
from ncg_jax.spaces import build_spaces
from ncg_jax.train.losses import NATURAL
from ncg_jax.data import corruptions

flags.DEFINE_list("corruptions", None, "Corruptions to run (default: all of the family).")
FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class CorruptedConfig:
  experiment: common.ExperimentConfig  # the clean dataset's models, spaces, seed
  corruptions: tuple[str, ...] | None = None  # None: every corruption of the family

ALPHA = 0.05


def summarize(cells: list[dict], losses: list[str]) -> dict:
  """Per loss: mean NCG and accuracy, cells where NCG-correct points are significantly more
  accurate, NCG by severity (mean +- SEM over corruptions), and robust-vs-natural NCG."""
  out = {}
  by_loss = {loss: [c for c in cells if c["loss"] == loss] for loss in losses}
  for loss, rows in by_loss.items():
    ncgs = np.array([r["ncg"] for r in rows])
    severities = sorted({r["severity"] for r in rows})
    per_sev = {s: np.array([r["ncg"] for r in rows if r["severity"] == s]) for s in severities}
    out[loss] = {
        "ncg_mean": float(ncgs.mean()), "accuracy_mean": float(np.mean([r["accuracy"] for r in rows])),
        "significant_cells": int(sum(r["welch_t"] > 0 and r["welch_p"] < ALPHA for r in rows)),
        "cells": len(rows),
        "ncg_by_severity": {str(s): {"mean": float(v.mean()),
                                     "sem": float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0}
                            for s, v in per_sev.items()},
    }
    out[loss]["distance_accuracy_pearson"] = ncg.distance_accuracy_correlation(
        [r["mean_nn_dist"] for r in rows], [r["accuracy"] for r in rows])
    if loss != NATURAL and NATURAL in by_loss:
      key = lambda r: (r["corruption"], r["severity"])
      nat = {key(r): r["ncg"] for r in by_loss[NATURAL]}
      out[loss]["vs_natural"] = ncg.paired_summary(ncgs, [nat[key(r)] for r in rows])
      slopes = {}
      for c in dict.fromkeys(r["corruption"] for r in rows):
        mine = [r for r in rows if r["corruption"] == c]
        if len(mine) >= 3:
          slopes[c] = ncg.slope_vs_severity([r["severity"] for r in mine], [r["ncg"] for r in mine],
                                            [nat[key(r)] for r in mine])
      out[loss]["slope_vs_severity"] = slopes
      out[loss]["steeper_cells"] = int(sum(v["t"] > 0 and v["pvalue"] < ALPHA
                                           for v in slopes.values()))
  return out


def table(summary: dict) -> str:
  rows = ["| space | run | mean NCG | mean acc | cells acc(NCG)>acc(not NCG), p<.05 | "
          "NCG − ce (mean ± SEM) | NCG / ce (mean ± SEM) | NCG slope > ce's, p<.05 | "
          "r(distance, acc) |", "|---|---|---|---|---|---|---|---|---|"]
  for space, by_loss in summary.items():
    for loss, s in by_loss.items():
      v = s.get("vs_natural")
      diff = f"{v['diff_mean']:+.3f} ± {v['diff_sem']:.3f}" if v else "-"
      ratio = f"{v['ratio_mean']:.3f} ± {v['ratio_sem']:.3f}" if v else "-"
      slope = f"{s['steeper_cells']}/{len(s['slope_vs_severity'])}" if v else "-"
      rows.append(f"| {space} | {loss} | {s['ncg_mean']:.3f} | {s['accuracy_mean']:.3f} | "
                  f"{s['significant_cells']}/{s['cells']} | {diff} | {ratio} | {slope} | "
                  f"{s['distance_accuracy_pearson']['r']:.3f} |")
  return "\n".join(rows)


def run(config: CorruptedConfig, log=print) -> dict:
  t_start = time.perf_counter()
  cfg = config.experiment
  ds = data.load(cfg.dataset, cfg.data_dir)
  family = corruptions.cells(ds, cfg.data_dir, config.corruptions, seed=cfg.seed)
  out_dir = common.results_dir(cfg)
  log(f"{cfg.dataset}: {len(ds.train)} train, K={ds.num_classes}; {cfg.dataset}-c: "
      f"{len(family)} cells ({len({c.corruption for c in family})} corruptions)")
  built = build_spaces(cfg, ds.train, ds.num_classes, cfg.spaces, log)
  cells = {space: [] for space in built}
  for i, cell in enumerate(family):
    t0 = time.perf_counter()
    x, y = cell.load()
    line = []
    for space, sp in built.items():
      q = sp.embed(x)
      dist, idx = neighbors.nearest(sp.db, q, k=1, backend=cfg.nn_backend)
      nn_y = ds.train.y[idx[:, 0]]
      for loss in sp.models:
        pred = sp.predict(loss, x, q)
        cells[space].append({"corruption": cell.corruption, "severity": cell.severity,
                             "loss": loss, "n": len(y), "ncg": ncg.ncg_score(pred, nn_y),
                             "accuracy": float(np.mean(pred == y)),
                             "mean_nn_dist": float(dist[:, 0].mean()),
                             **ncg.conditional_accuracy(pred, y, nn_y)})
        line.append(f"{space}/{loss} {cells[space][-1]['ncg']:.3f}")
    log(f"[{i + 1}/{len(family)}] {cell.corruption} s{cell.severity} ({len(y)} images): NCG "
        + ", ".join(line) + f" ({time.perf_counter() - t0:.1f}s)")
  summary = {space: summarize(rows, list(built[space].models)) for space, rows in cells.items()}
  results = {"flags": cfg.flags, "versions": common.versions(),
             "dataset": {"name": ds.name, "family": f"{cfg.dataset}-c", "train": len(ds.train),
                         "num_classes": ds.num_classes},
             "nn_backend": neighbors.resolve_backend(cfg.nn_backend),
             "summary": summary, "cells": cells, "seconds": time.perf_counter() - t_start}
  md = table(summary)
  common.write_tables(out_dir, "corrupted", results,
                      f"NCG on {cfg.dataset}-c ({cfg.model}, seed {cfg.seed})", md)
  plots.ncg_vs_severity({space: {loss: s["ncg_by_severity"] for loss, s in by.items()}
                         for space, by in summary.items()},
                        os.path.join(out_dir, "corrupted_ncg_vs_severity.png"),
                        f"{cfg.dataset}-c, {cfg.model}")
  log("\n" + md + f"\n\nwrote {out_dir}/corrupted.{{json,md}}, corrupted_ncg_vs_severity.png")
  return results


def main(argv):
  del argv
  chosen = tuple(c.strip() for c in FLAGS.corruptions or () if c.strip()) or None
  run(CorruptedConfig(common.config_from_flags(dataset=corruptions.base_name(FLAGS.dataset)),
                      chosen))


if __name__ == "__main__":
  common.run(main, unused=("robust_n",), why="it measures clean accuracy per corruption cell")
