"""OOD detection on the held-out class and on noise, for every trained model.

python -m experiments.detect --dataset=digitswo9 --model=cnn002 [--detectors=msp,odin,...]

For every pixel-space run in the workdir (natural and robust): a seeded 20% of the ID test
split is ID-validation and a seeded 20% of the held-out class is OOD-validation; each
detector is fitted on the training split, its grid searched on the validation pair (APS,
highest AUROC), then the remaining ID test images are scored against each OOD test set:
the rest of the held-out class, the dataset's external OOD sets where it has them (CIFAR-10:
OpenOOD v1.5's near and far sets, `ncg_jax/data/ood_sets.py`), uniform noise and Gaussian
noise. Writes, beside the NCG results, detect_<ood set>.md / .json (run x detector x metric),
detect_roc_<ood set>.png, and detect_summary.md (AUROC and FPR95 per set with each group's
mean: held-out class, near, far, noise).
"""
import os
import time

import numpy as np
from absl import flags

from experiments import common
from ncg_jax import plots, runs
from ncg_jax.data import ood_sets as ood_sets_lib
from ncg_jax.detect import metrics
from ncg_jax.detect.registry import DETECTORS, Inputs, Model, score, search
from ncg_jax.registry import ConfigError

flags.DEFINE_string("detectors", ",".join(DETECTORS.names()), "Comma-separated detectors.")
flags.DEFINE_float("val_fraction", 0.2, "Share of ID test and held-out class used for APS.")
flags.DEFINE_integer("max_ood", 10000, "Seeded sample size cap of each external OOD set.")
FLAGS = flags.FLAGS

METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95", "fpr95_openood", "detection_error")


def noise_sets(shape: tuple, n: int, seed: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng([seed, 7])
  uniform = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
  gauss = np.clip(np.rint(255.0 * rng.normal(0.5, 0.25, size=(n, *shape))), 0, 255).astype(np.uint8)
  return {"uniform_noise": uniform, "gaussian_noise": gauss}


def split_val(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  perm = np.random.default_rng([seed, n]).permutation(n)
  k = max(1, int(round(fraction * n)))
  return np.sort(perm[:k]), np.sort(perm[k:])


def table(rows: dict, ood_name: str) -> str:
  out = [f"### OOD set: {ood_name}", "",
         "| run | detector | " + " | ".join(METRICS) + " | chosen hyperparameters |",
         "|---|---|" + "---|" * (len(METRICS) + 1)]
  for run, dets in rows.items():
    for det, r in dets.items():
      hp = ", ".join(f"{k}={v}" for k, v in r["hyperparameters"].items()) or "-"
      out.append(f"| {run} | {det} | " + " | ".join(f"{r[m]:.4f}" for m in METRICS) + f" | {hp} |")
  return "\n".join(out)


def summary_table(rows: dict, groups: dict[str, list[str]], metric: str) -> tuple[dict, str]:
  """One metric for every OOD set and each group's unweighted mean (OpenOOD's near/far
  rows), per run and detector."""
  sets = [name for name in rows]
  means = {run: {det: {g: float(np.mean([rows[n][run][det][metric] for n in names]))
                       for g, names in groups.items()}
                 for det in dets} for run, dets in next(iter(rows.values())).items()}
  head = sets + [f"{g} (mean)" for g in groups]
  out = [f"### {metric} per OOD set", "", "| run | detector | " + " | ".join(head) + " |",
         "|---|---|" + "---|" * len(head)]
  for run, dets in means.items():
    for det, by_group in dets.items():
      vals = [rows[n][run][det][metric] for n in sets] + [by_group[g] for g in groups]
      out.append(f"| {run} | {det} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
  return means, "\n".join(out)


def run(cfg: common.ExperimentConfig, detectors: tuple[str, ...], val_fraction: float,
        max_ood: int = 10000, log=print) -> dict:
  ds = common.load_heldout(cfg)
  found = common.pixel_runs(cfg)
  out_dir = common.results_dir(cfg)
  id_val, id_test = split_val(len(ds.test), val_fraction, cfg.seed)
  ood_val, ood_test = split_val(len(ds.ood), val_fraction, cfg.seed + 1)
  heldout = f"heldout_class_{ds.held_out}"
  external = ood_sets_lib.load(ds.base, ds.test.x.shape[1:], cfg.data_dir, max_ood, cfg.seed, log)
  noise = noise_sets(ds.test.x.shape[1:], len(id_test), cfg.seed)
  ood_sets = {heldout: ds.ood.x[ood_test], **external, **noise}
  groups = {"heldout": [heldout], **ood_sets_lib.groups(ds.base), "noise": list(noise)}
  log(f"ID val {len(id_val)} / test {len(id_test)}; OOD val {len(ood_val)} (class {ds.held_out}); "
      + ", ".join(f"{k} {len(v)}" for k, v in ood_sets.items()))
  rows = {name: {} for name in ood_sets}
  curves = {name: {} for name in ood_sets}
  for run_name, record in found.items():
    trained = runs.load(record, workdir=cfg.workdir, dataset=cfg.dataset, model_name=cfg.model,
                        data=ds.train, num_classes=ds.num_classes, log=log)
    model = Model(trained, ds.train.x, ds.train.y, ds.num_classes, seed=cfg.seed)
    v_id, v_ood = Inputs(model, ds.test.x[id_val]), Inputs(model, ds.ood.x[ood_val])
    t_id = Inputs(model, ds.test.x[id_test])
    t_ood = {k: Inputs(model, v) for k, v in ood_sets.items()}
    for name in ood_sets:
      rows[name][run_name], curves[name][run_name] = {}, {}
    for det in detectors:
      t0 = time.perf_counter()
      state, hp, trace = search(det, model, v_id, v_ood)
      s_id = score(det, state, t_id, hp)
      for name, inputs in t_ood.items():
        s_ood = score(det, state, inputs, hp)
        m = metrics.evaluate(s_id, s_ood)
        rows[name][run_name][det] = {**m, "hyperparameters": hp,
                                     "search": [{"hyperparameters": h, "val_auroc": a} for h, a in trace]}
        curves[name][run_name][det] = metrics.roc(s_id, s_ood)
      log(f"[{run_name}] {det}: {', '.join(f'{k} {v:g}' for k, v in hp.items()) or 'no grid'}"
          f" ({len(trace) or 1} grid points, {time.perf_counter() - t0:.1f}s)")
  group_means, summary_md = {}, []
  for metric in ("auroc", "fpr95"):
    group_means[metric], text = summary_table(rows, groups, metric)
    summary_md.append(text)
  results = {"flags": cfg.flags, "versions": common.versions(),
             "splits": {"id_val": len(id_val), "id_test": len(id_test), "ood_val": len(ood_val),
                        **{k: len(v) for k, v in ood_sets.items()}},
             "groups": groups, "group_means": group_means, "ood_sets": rows}
  common.write_json(os.path.join(out_dir, "detect.json"), results)
  common.write_markdown(os.path.join(out_dir, "detect_summary.md"),
                        f"OOD detection, {cfg.dataset} ({cfg.model})", "\n\n".join(summary_md))
  md = []
  for name in ood_sets:
    md.append(table(rows[name], name))
    common.write_tables(out_dir, f"detect_{name}", rows[name],
                        f"OOD detection, {cfg.dataset} ({cfg.model})", md[-1])
    plots.roc_curves(curves[name], os.path.join(out_dir, f"detect_roc_{name}.png"),
                     f"{cfg.dataset} vs {name}")
  log("\n" + "\n\n".join(md + summary_md) + f"\n\nwrote {out_dir}/detect_*.{{md,json,png}}")
  return results


def main(argv):
  del argv
  names = tuple(s.strip() for s in FLAGS.detectors.split(",") if s.strip())
  for n in names:
    DETECTORS.lookup(n)
  if not names:
    raise ConfigError(f"--detectors is empty; valid: {', '.join(DETECTORS.names())}")
  if not 0 < FLAGS.val_fraction < 1:
    raise ConfigError("--val_fraction must be between 0 and 1")
  if FLAGS.max_ood < 1:
    raise ConfigError("--max_ood must be at least 1")
  run(common.config_from_flags(), names, FLAGS.val_fraction, FLAGS.max_ood)


if __name__ == "__main__":
  common.run(main)
