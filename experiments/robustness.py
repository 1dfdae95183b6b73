"""Robustness radius of the training images that OOD images fall next to (the NCG paper's
Fig. 3, `ood_robustness_correct`).

python -m experiments.robustness --dataset=digitswo9 --model=cnn002

For every pixel-space run in the workdir: take the training images that are some OOD
image's nearest neighbour and that the model classifies correctly (a seeded sample of up to
--n_samples), find each one's closest adversarial example with CW-L2, and report the mean
radius, the mean OOD-to-neighbour distance, and the fraction of OOD images (among those
whose neighbour was attacked successfully) lying closer to their neighbour than its radius
("covered"). The OOD distance is reported as the paper's (`robustness.ipynb`
`get_rob_results`: the mean over OOD images whose neighbour was attacked successfully) and
over all OOD images. Also each run's clean and robust test accuracy (PGD with restarts,
APGD-CE, APGD-DLR at its own norm and eps; natural runs at --eps). The CW budget is the
paper's by default (9 binary-search steps x 10,000 iterations, abort test every 1,000);
`--cw_binary_search_steps=5 --cw_max_iterations=500 --cw_initial_const=0.1` is the reduced
budget of the README's measured run. Writes robustness.json, robustness.md and robustness_hist.png beside the NCG
results.
"""
import dataclasses
import os
import time

import numpy as np
from absl import flags

from experiments import common
from ncg_jax import neighbors, plots, runs
from ncg_jax.attacks import cw_l2
from ncg_jax.train.losses import AttackConfig
from ncg_jax.models import logits_and_features
from ncg_jax.registry import ConfigError

flags.DEFINE_integer("n_samples", 300, "Training neighbours attacked per run.")
flags.DEFINE_integer("cw_binary_search_steps", 9, "CW-L2 binary-search steps (paper: 9).")
flags.DEFINE_integer("cw_max_iterations", 10000, "CW-L2 iterations per binary-search step "
                     "(the paper's 10000; abort-early, tested every tenth, stops most sooner).")
flags.DEFINE_float("cw_initial_const", 1e-3, "CW-L2 initial trade-off constant (paper: 1e-3).")
flags.DEFINE_integer("cw_batch_size", 100, "Images per CW-L2 batch (the paper's 100); "
                     "progress is printed after each.")
FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class CWBudget:
  """Carlini-Wagner L2's budget (`attacks.cw_l2`'s arguments; defaults: the paper's)."""
  binary_search_steps: int = 9
  max_iterations: int = 10000
  initial_const: float = 1e-3
  batch_size: int = 100


@dataclasses.dataclass(frozen=True)
class RobustnessConfig:
  experiment: common.ExperimentConfig  # dataset, model, seed, workdir, robust_n, attack eps
  cw: CWBudget = CWBudget()
  n_samples: int = 300  # training neighbours attacked per run


def table(rows: dict) -> str:
  out = ["| run | test acc | robust acc | attacked | CW failures | mean radius | "
         "OOD dist (paper: attacked neighbours) | OOD dist (all) | covered |",
         "|---|---|---|---|---|---|---|---|---|"]
  for run, r in rows.items():
    rob = r.get("robust")
    rob_s = f"{rob['any']:.3f} ({rob['norm']} {rob['eps']:g})" if rob else "-"
    out.append(f"| {run} | {r['test_accuracy']:.3f} | {rob_s} | {r['attacked']} | "
               f"{r['failure_rate']:.3f} | {r['mean_radius']:.3f} | "
               f"{r['mean_ood_dist_attacked']:.3f} | {r['mean_ood_dist']:.3f} | {r['covered']:.4f} |")
  return "\n".join(out)


def cw_in_chunks(logits_fn, x, y, cw: dict, log=print, name: str = ""):
  """CW-L2 over x in chunks of cw['batch_size'], with progress and time left after each."""
  bs = cw["batch_size"]
  advs, oks, t0 = [], [], time.perf_counter()
  for start in range(0, len(x), bs):
    n = min(bs, len(x) - start)
    rows = np.arange(start, start + bs) if len(x) >= bs else np.arange(len(x))
    rows = np.where(rows < len(x), rows, start)  # pad the last chunk: one compiled shape
    adv, ok = cw_l2(logits_fn, x[rows], y[rows], **cw)
    advs.append(adv[:n])
    oks.append(ok[:n])
    done, elapsed = min(start + bs, len(x)), time.perf_counter() - t0
    log(f"  [{name}] CW-L2 {done}/{len(x)} images, {elapsed:.0f}s, "
        f"about {elapsed / done * (len(x) - done):.0f}s left")
  if not advs:
    return x, np.zeros(0, bool)
  return np.concatenate(advs), np.concatenate(oks)


def run(config: RobustnessConfig, log=print) -> dict:
  cfg, n_samples, robust_n = config.experiment, config.n_samples, config.experiment.robust_n
  cw = dataclasses.asdict(config.cw)
  ds = common.load_heldout(cfg)
  found = common.pixel_runs(cfg)
  out_dir = common.results_dir(cfg)
  train_x = ds.train.x.astype(np.float32) / 255.0
  ood_dist, ood_idx = neighbors.nearest(train_x, ds.ood.x.astype(np.float32) / 255.0,
                                        backend=cfg.nn_backend)
  ood_dist, ood_idx = ood_dist[:, 0], ood_idx[:, 0]
  neighbours = np.unique(ood_idx)
  log(f"{len(ds.ood)} OOD images have {len(neighbours)} distinct nearest training images")
  rows, hist = {}, {}
  for name, record in found.items():
    trained = runs.load(record, workdir=cfg.workdir, dataset=cfg.dataset, model_name=cfg.model,
                        data=ds.train, num_classes=ds.num_classes)
    pred = logits_and_features(trained, ds.train.x[neighbours])[0].argmax(1)
    correct = neighbours[pred == ds.train.y[neighbours]]
    rng = np.random.default_rng(cfg.seed)
    sample = np.sort(rng.permutation(correct)[:n_samples])
    t0 = time.perf_counter()
    adv, ok = cw_in_chunks(trained.logits_fn(), train_x[sample], ds.train.y[sample], cw, log, name)
    radius = np.full(len(ds.train), np.nan)
    radius[sample[ok]] = np.linalg.norm((adv - train_x[sample])[ok].reshape(ok.sum(), -1), axis=1)
    measured = ~np.isnan(radius[ood_idx])
    test_acc = float(np.mean(logits_and_features(trained, ds.test.x)[0].argmax(1) == ds.test.y))
    rows[name] = {
        "test_accuracy": test_acc, "neighbours": int(len(neighbours)),
        "correct_neighbours": int(len(correct)), "attacked": int(len(sample)),
        "failure_rate": float(1.0 - ok.mean()) if len(sample) else float("nan"),
        "mean_radius": float(np.nanmean(radius[sample])) if ok.any() else float("nan"),
        "median_radius": float(np.nanmedian(radius[sample])) if ok.any() else float("nan"),
        "mean_ood_dist": float(ood_dist.mean()),
        "mean_ood_dist_attacked": float(ood_dist[measured].mean()) if measured.any() else float("nan"),
        "covered": float(np.mean(ood_dist[measured] < radius[ood_idx[measured]])) if measured.any() else float("nan"),
        "ood_with_measured_neighbour": int(measured.sum()),
        "seconds": time.perf_counter() - t0,
    }
    attack = record.get("attack")
    if robust_n:
      attack = AttackConfig(**{**attack, "clip": (0.0, 1.0)}) if attack else cfg.attack
      rows[name]["robust"] = common.robust_on_test(trained, ds.test.x, ds.test.y, attack,
                                                   robust_n, cfg.seed)
    hist[name] = {"radii": radius[sample[ok]].tolist(), "ood_dist": ood_dist.tolist()}
    log(f"[{name}] CW-L2 on {len(sample)} neighbours: mean radius {rows[name]['mean_radius']:.3f}, "
        f"{(~ok).sum()} failures ({rows[name]['seconds']:.0f}s)")
  results = {"flags": cfg.flags, "versions": common.versions(), "cw": cw, "runs": rows,
             "radii": {k: v["radii"] for k, v in hist.items()}}
  md = table(rows)
  common.write_tables(out_dir, "robustness", results,
                      f"Robustness radius of OOD neighbours, {cfg.dataset} ({cfg.model})", md)
  plots.radius_histograms(hist, os.path.join(out_dir, "robustness_hist.png"),
                          f"{cfg.dataset}, {cfg.model}: neighbours' CW-L2 radius vs OOD distance")
  log("\n" + md + f"\n\nwrote {out_dir}/{{robustness.json, robustness.md, robustness_hist.png}}")
  return results


def main(argv):
  del argv
  cw = CWBudget(binary_search_steps=FLAGS.cw_binary_search_steps,
                max_iterations=FLAGS.cw_max_iterations, initial_const=FLAGS.cw_initial_const,
                batch_size=FLAGS.cw_batch_size)
  if FLAGS.n_samples < 1 or min(cw.binary_search_steps, cw.max_iterations, cw.batch_size) < 1:
    raise ConfigError("--n_samples, --cw_binary_search_steps, --cw_max_iterations and "
                      "--cw_batch_size must be at least 1")
  run(RobustnessConfig(common.config_from_flags(), cw, FLAGS.n_samples))


if __name__ == "__main__":
  common.run(main, unused=common.TRAINING_FLAGS + ("space",),
             why="it attacks the trained pixel-space runs it finds in --workdir")
