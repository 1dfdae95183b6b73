"""The main job: NCG in pixel and feature space for every run, natural vs robust.

python -m experiments.ncg --dataset=digitswo9 --model=cnn002 [--losses=ce,trades6,advce]
    [--eps=2,4,8] [--space=both] [--feature_network=ce] [--feature_layer=...]

For each loss (robust losses at each --eps) or imported run it trains (or reuses, or loads)
the pixel-space classifier and, in feature space, an MLP head per loss on the features of
--feature_network (the natural network's; the paper's layer: CNN002's 1,024-d convolutional
features, else the penultimate); finds every OOD and ID-test input's nearest training input
(exact L2); measures clean training and test accuracy and robust accuracy on the ID test
split (PGD with restarts, APGD-CE, APGD-DLR at the run's norm and eps; the natural and
imported runs at the first eps); flags runs that did not learn or are not robust; and writes
to <workdir>/<dataset>/<model>/seed<s>/: results.json, ncg_table.md, ncg_<space>_<run>.npz
and ncg_vs_distance.png.
"""
import dataclasses
import os
import sys
import time

import numpy as np
from absl import flags

from experiments import common
from ncg_jax import data, ncg, neighbors, plots, runs, sharding
from ncg_jax.models import logits_and_features
from ncg_jax.spaces import Space, build_spaces
from ncg_jax.registry import ConfigError
from ncg_jax.train import losses

flags.DEFINE_list("held_out", None, "'all' or classes k: run the job on <dataset>wo<k> for "
                  "each (--dataset names the base) and summarise the sweep as the paper's "
                  "Table 1 (chi-square per class, mean +- SEM over classes).")
FLAGS = flags.FLAGS

NATURAL = losses.NATURAL
LEARNED_MARGIN = 0.05  # accuracy within this of chance: the run did not learn
ROBUST_FLOOR = 0.05    # a robust run below this robust accuracy is not robust


def table(results: dict) -> str:
  rows = ["| space | run | train acc | test acc | robust acc | NCG (OOD) | χ² p (1/K) | "
          "chance (class freq) | χ² p (class freq) | ID NCG | noise NCG | mean NN dist | flags |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for space, by_run in results["spaces"].items():
    for run, r in by_run.items():
      o, rob = r["ood"], r.get("robust")
      rob_s = f"{rob['any']:.3f} ({rob['norm']} {rob['eps']:g})" if rob else "-"
      rows.append(
          f"| {space} | {run} | {r['train_accuracy']:.3f} | {r['test_accuracy']:.3f} | {rob_s} | "
          f"{o['ncg']:.3f} | {o['chisquare_uniform']['pvalue']:.2e} | "
          f"{o['chisquare_class_frequency']['chance_match_rate']:.3f} | "
          f"{o['chisquare_class_frequency']['pvalue']:.2e} | {r['id']['ncg']:.3f} | "
          f"{r['uniform_noise']['ncg']:.3f} | {o['mean_nn_dist']:.3f} | {', '.join(r['flags']) or '-'} |")
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


def assess(sp: Space, run: str, ds: data.Dataset, queries_test: np.ndarray,
           default_attack, robust_n: int, seed: int, log=print) -> dict:
  """Clean training and test accuracy, robust accuracy on a seeded sample of the ID test
  split, and the flags of a run that did not learn or is not robust."""
  trained, spec = sp.models[run], sp.specs.get(run)
  train_in = ds.train.x if sp.name == "pixel" else sp.db
  train_acc = float(np.mean(logits_and_features(trained, train_in)[0].argmax(-1) == ds.train.y))
  test_pred = sp.predict(run, ds.test.x, queries_test)
  test_acc = float(np.mean(test_pred == ds.test.y))
  chance = float(np.bincount(ds.test.y).max() / len(ds.test.y))
  out = {"train_accuracy": train_acc, "test_accuracy": test_acc, "chance_accuracy": chance,
         "flags": []}
  if max(train_acc, test_acc) < chance + LEARNED_MARGIN:
    out["flags"].append("did not learn")
  attack = spec.attack if spec is not None and spec.attack is not None else default_attack
  if robust_n and attack is not None:
    t0 = time.perf_counter()
    rob = out["robust"] = common.robust_on_test(trained, sp.inputs(ds.test.x, queries_test),
                                                ds.test.y, attack, robust_n, seed)
    log(f"[{sp.name}/{run}] robust accuracy {rob['any']:.3f} at {attack.norm} eps "
        f"{attack.eps:g} on {rob['n']} test images ({time.perf_counter() - t0:.1f}s)")
    is_robust_run = spec is not None and spec.loss in losses.LOSSES and losses.is_robust(spec.loss)
    if is_robust_run and rob["any"] < ROBUST_FLOOR:
      out["flags"].append("not robust")
  for flag in out["flags"]:
    print(f"warning: {sp.name}/{run} {flag}: train acc {train_acc:.3f}, test acc {test_acc:.3f}, "
          f"chance {chance:.3f}" + (f", robust acc {out['robust']['any']:.3f}" if "robust" in out else "")
          + "; its NCG is reported but does not describe a working classifier", file=sys.stderr)
  return out, test_pred


def run(cfg: common.ExperimentConfig, log=print) -> dict:
  t_start = time.perf_counter()
  ds = common.load_heldout(cfg)
  out_dir = common.results_dir(cfg)
  log(f"{cfg.dataset}: {len(ds.train)} train, {len(ds.test)} test, {len(ds.ood)} OOD "
      f"(class {ds.held_out}), K={ds.num_classes}")
  built = build_spaces(cfg, ds.train, ds.num_classes, cfg.spaces, log)
  results = {"flags": cfg.flags, "versions": common.versions(),
             "dataset": {"name": ds.name, "held_out": ds.held_out, "num_classes": ds.num_classes,
                         "train": len(ds.train), "test": len(ds.test), "ood": len(ds.ood),
                         "label_map": "new = old if old < k else old - 1"},
             "nn_backend": neighbors.resolve_backend(cfg.nn_backend),
             "feature_network": cfg.feature_network, "spaces": {}}
  # uniform noise (the paper's random-noise NCG: 0.53 on CIFAR10-wo0), one image per test image
  noise = np.random.default_rng([cfg.seed, 5]).integers(0, 256, ds.test.x.shape, dtype=np.uint8)
  feature_attack = next((r.attack for r in cfg.feature_runs if r.attack is not None),
                        dataclasses.replace(cfg.attack, clip=None))
  curves = {}
  for space, sp in built.items():
    if sp.layer:
      results["feature_layer"] = sp.layer
    test_q, ood_q, noise_q = sp.embed(ds.test.x), sp.embed(ds.ood.x), sp.embed(noise)
    t0 = time.perf_counter()
    ood_dist, ood_idx = neighbors.nearest(sp.db, ood_q, k=1, backend=cfg.nn_backend)
    _, test_idx = neighbors.nearest(sp.db, test_q, k=1, backend=cfg.nn_backend)
    _, noise_idx = neighbors.nearest(sp.db, noise_q, k=1, backend=cfg.nn_backend)
    ood_nn_y, test_nn_y = ds.train.y[ood_idx[:, 0]], ds.train.y[test_idx[:, 0]]
    log(f"[{space}] nearest neighbours of {len(ood_q)} OOD, {len(test_q)} test and "
        f"{len(noise_q)} noise inputs among {len(sp.db)} ({time.perf_counter() - t0:.1f}s)")
    results["spaces"][space], curves[space] = {}, {}
    for run_name in sp.models:
      ood_pred = sp.predict(run_name, ds.ood.x, ood_q)
      quality, test_pred = assess(sp, run_name, ds, test_q,
                                  cfg.attack if space == "pixel" else feature_attack,
                                  cfg.robust_n, cfg.seed, log)
      summary = ncg.summarize(ood_pred, ood_nn_y, ood_dist[:, 0], ds.num_classes)
      noise_pred = sp.predict(run_name, noise, noise_q)
      results["spaces"][space][run_name] = {
          **quality, "ood": summary,
          "id": {"ncg": ncg.ncg_score(test_pred, test_nn_y)},
          "uniform_noise": {"ncg": ncg.ncg_score(noise_pred, ds.train.y[noise_idx[:, 0]]),
                            "n": int(len(noise))},
      }
      curves[space][run_name] = summary["ncg_vs_distance"]
      sharding.write_file(
          os.path.join(out_dir, f"ncg_{space}_{run_name}.npz"),
          lambda f: np.savez_compressed(
            f, train_x=ds.train.x if space == "pixel" else sp.db, train_y=ds.train.y,
            ood_x=ds.ood.x if space == "pixel" else ood_q, ood_y_original=ds.ood.y,
            ood_pred=ood_pred, nn_index=ood_idx[:, 0], nn_dist=ood_dist[:, 0],
            test_pred=test_pred, test_nn_index=test_idx[:, 0],
            feature_layer=np.array(sp.layer or "pixels")))
  results["seconds"] = time.perf_counter() - t_start
  md = table(results)
  common.write_json(os.path.join(out_dir, "results.json"), results)
  common.write_markdown(os.path.join(out_dir, "ncg_table.md"),
                        f"NCG on {cfg.dataset} ({cfg.model}, seed {cfg.seed})", md)
  plots.ncg_vs_distance(curves, os.path.join(out_dir, "ncg_vs_distance.png"),
                        f"{cfg.dataset}, {cfg.model}")
  log("\n" + md + f"\n\nwrote {out_dir}/{{results.json, ncg_table.md, ncg_vs_distance.png, *.npz}}")
  return results


def sweep(base: str, classes: list[int], results: dict[int, dict], model: str) -> tuple[dict, str]:
  """Per space and run: NCG per held-out class, the paper's chi-square p-values, and the
  mean +- SEM over classes; the number of classes significant at 0.05 (NCG above 1/K)."""
  summary = {}
  for k, res in results.items():
    for space, by_run in res["spaces"].items():
      for run_name, r in by_run.items():
        summary.setdefault(space, {}).setdefault(run_name, {"per_class": {}})["per_class"][str(k)] = {
            "ncg": r["ood"]["ncg"], "chisquare_uniform": r["ood"]["chisquare_uniform"],
            "test_accuracy": r["test_accuracy"], "flags": r["flags"]}
  for space, by_run in summary.items():
    for run_name, s in by_run.items():
      per = s["per_class"].values()
      s["ncg"] = ncg.mean_sem([v["ncg"] for v in per])
      s["significant_classes"] = int(sum(
          v["chisquare_uniform"]["pvalue"] < 0.05 and v["chisquare_uniform"]["observed_match_rate"]
          > v["chisquare_uniform"]["chance_match_rate"] for v in per))
  head = [f"wo{k}" for k in classes]
  rows = [f"Held-out-class sweep of {base} ({model}): NCG per held-out class; p < .05 counts "
          "classes whose NCG exceeds 1/K by the paper's chi-square test.", "",
          "| space | run | " + " | ".join(head) + " | mean ± SEM | p < .05 |",
          "|---|---|" + "---|" * (len(head) + 2)]
  for space, by_run in summary.items():
    for run_name, s in by_run.items():
      vals = [f"{s['per_class'][str(k)]['ncg']:.3f}" if str(k) in s["per_class"] else "-"
              for k in classes]
      rows.append(f"| {space} | {run_name} | " + " | ".join(vals) + f" | {s['ncg']['mean']:.3f} ± "
                  f"{s['ncg']['sem']:.3f} | {s['significant_classes']}/{len(s['per_class'])} |")
  return summary, "\n".join(rows)


def main(argv):
  del argv
  if not FLAGS.held_out:
    run(common.config_from_flags())
    return
  base = FLAGS.dataset
  k_total = data.num_classes(base)
  if k_total is None:
    data.parse_name(base)  # a clear error for unknown names
    k_total = data.load(base, FLAGS.data_dir).num_classes
  try:
    classes = (list(range(k_total)) if FLAGS.held_out == ["all"]
               else [int(k) for k in FLAGS.held_out])
  except ValueError:
    raise ConfigError(f"--held_out={','.join(FLAGS.held_out)}: 'all' or comma-separated class "
                      "indices") from None
  configs = {k: common.config_from_flags(dataset=data.held_out_name(base, k)) for k in classes}
  results = {}
  for i, (k, cfg) in enumerate(configs.items()):
    print(f"=== held-out class {k} ({i + 1}/{len(configs)}) ===")
    results[k] = run(cfg)
  summary, md = sweep(base, classes, results, FLAGS.model)
  out_dir = runs.seed_dir(FLAGS.workdir, base, FLAGS.model, FLAGS.seed)
  common.write_tables(out_dir, "ncg_sweep", {"flags": common.own_flags(), "classes": classes,
                                              "summary": summary},
                      f"NCG over held-out classes of {base}", md)
  print("\n" + md + f"\n\nwrote {out_dir}/ncg_sweep.{{json,md}}")


if __name__ == "__main__":
  common.run(main)
