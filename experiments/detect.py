"""OOD detection: every detector on every run of a dataset/model, on any OOD sets.

  # held-out class (as before): ID = the 9 trained classes, OOD = the held-out class + noise
  python -m experiments.detect --dataset=digitswo9 --model=cnn002
  # all classes in-distribution, any OOD sets, OpenOOD-style validation
  python -m experiments.detect --dataset=cifar10 --model=resnet18 \
      --ood=svhn=svhn_cropped,lsun=folder:/data/LSUN --ood_val=folder:/data/tin_val
  # OpenOOD v1.5's benchmark from OpenOOD's own image lists
  python -m experiments.detect --benchmark=openood:cifar10 --openood_root=/data/openood \
      --model=resnet18

Modes (ID test / OOD test / validation):
- `--dataset=<base>wo<k>`: ID test = the test split of the kept classes (a seeded
  `--val_fraction` of it is ID-validation); OOD = the rest of the held-out class (its
  seeded `--val_fraction` is OOD-validation), the base's external sets (CIFAR-10: OpenOOD's
  near/far from TFDS, `data/ood_sets.py`), `--ood` sets, uniform and Gaussian noise.
- `--dataset=<base>` (no class held out): ID test = the test split (minus the seeded
  ID-validation part, or all of it with `--id_val=SPEC`); OOD = `--ood` sets (default: the
  base's external sets) and noise; OOD-validation = `--ood_val=SPEC`; without it every
  detector runs at its default hyperparameters (said in the output).
- `--benchmark=openood:<cifar10|cifar100|imagenet200|imagenet>`: every split from OpenOOD's
  lists under `--openood_root` (`data/openood.py`); runs are looked up under
  `--dataset=<benchmark id>`; near/far group means as OpenOOD's leaderboard.
`--tune=odin` replaces the shared OOD-validation set by ODIN's protocol: each OOD set's
hyperparameters are tuned on a seeded 1,000 of its own images, scored on the rest.

SPEC: `folder:PATH`, `npz:PATH`, `imglist:LIST@ROOT` or a TFDS name (`name[:split]`; see
`data/imagesets.py`). Images are brought to the model's input size as OpenOOD's test
transform does. Large sets are read lazily in fixed-shape batches (image files decoded on
worker processes); only logits, features and NAC's pooled states are kept per image.

Writes to <workdir>/<dataset>/<model>/seed<s>/: detect_summary.md (AUROC and both FPR95
conventions per set, with group means), detect_<set>.{md,json,csv}, detect_rows.csv (tidy:
run, detector, set, metric, value), detect_scores_<run>.npz (per-example scores,
`<detector>__<set>` and `<detector>__id`), detect_roc_<set>.png and detect.json.
"""
import dataclasses
import os
import time
from typing import Any

import numpy as np
from absl import flags

from experiments import common
from ncg_jax import data, plots, runs, sharding
from ncg_jax.batching import take
from ncg_jax.data import imagesets, ood_sets as ood_sets_lib, openood
from ncg_jax.detect import evaluation, metrics
from ncg_jax.detect.registry import DETECTORS, Inputs, Model
from ncg_jax.registry import ConfigError

flags.DEFINE_list("detectors", DETECTORS.names(), "Detectors to run.")
flags.DEFINE_float("val_fraction", 0.2, "Share of ID test (and held-out class) used for validation.")
flags.DEFINE_integer("max_ood", 10000, "Seeded sample size cap of each OOD test set (0: all).")
flags.DEFINE_list("ood", [], "Extra OOD test sets, NAME=SPEC (see the module docstring).")
flags.DEFINE_string("ood_groups", None, "Group means, e.g. 'near:cifar100,tin;far:svhn,mnist'.")
flags.DEFINE_string("ood_val", None, "OOD-validation SPEC for the hyperparameter search.")
flags.DEFINE_string("id_val", None, "ID-validation SPEC (default: a seeded share of ID test).")
flags.DEFINE_string("benchmark", None, "openood:<cifar10|cifar100|imagenet200|imagenet>.")
flags.DEFINE_string("openood_root", None, "With --benchmark: the folder OpenOOD's download "
                    "script fills (benchmark_imglist/, images_classic/, images_largescale/).")
flags.DEFINE_integer("fit_max", 50000, "Training images used for fitting (class-balanced, seeded).")
flags.DEFINE_enum("tune", "openood", ["openood", "odin"], "openood: one OOD-validation set; "
                  "odin: each OOD set tuned on 1,000 of its own images (ODIN's protocol).")
FLAGS = flags.FLAGS


def noise_sets(shape: tuple, n: int, seed: int) -> dict:
  """Uniform and Gaussian (mean 0.5, std 0.25, clipped) noise images, generated per image
  from (seed, index), so any number at any size costs no memory until read."""
  def uniform(i):
    return np.random.default_rng([seed, 7, 0, i]).integers(0, 256, size=shape, dtype=np.uint8)

  def gauss(i):
    g = np.random.default_rng([seed, 7, 1, i]).normal(0.5, 0.25, size=shape)
    return np.clip(np.rint(255.0 * g), 0, 255).astype(np.uint8)
  return {"uniform_noise": imagesets.LazyImages(uniform, n, shape, "uniform noise"),
          "gaussian_noise": imagesets.LazyImages(gauss, n, shape, "gaussian noise")}


def split_val(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  perm = np.random.default_rng([seed, n]).permutation(n)
  k = max(1, int(round(fraction * n)))
  return np.sort(perm[:k]), np.sort(perm[k:])


def parse_ood(specs: list[str]) -> dict[str, str]:
  out = {}
  for item in specs:
    name, sep, spec = item.partition("=")
    if not sep or not name or not spec:
      raise ConfigError(f"--ood entries are NAME=SPEC, got '{item}'")
    if name in out:
      raise ConfigError(f"--ood names '{name}' twice")
    out[name] = spec
  return out


def parse_groups(text: str | None, names: list[str]) -> dict[str, list[str]] | None:
  if not text:
    return None
  groups = {}
  for part in text.split(";"):
    g, sep, members = part.partition(":")
    listed = [m.strip() for m in members.split(",") if m.strip()]
    if not sep or not g.strip() or not listed:
      raise ConfigError(f"--ood_groups is 'group:set,set;group:set', got '{part}'")
    unknown = [m for m in listed if m not in names]
    if unknown:
      raise ConfigError(f"--ood_groups names unknown OOD sets {', '.join(unknown)}; "
                        f"sets: {', '.join(names)}")
    groups[g.strip()] = listed
  return groups


@dataclasses.dataclass(frozen=True)
class DetectConfig:
  dataset: str
  model: str
  workdir: str
  data_dir: str | None
  seed: int
  detectors: tuple[str, ...]
  val_fraction: float = 0.2
  max_ood: int = 10000
  ood: tuple[str, ...] = ()
  ood_groups: str | None = None
  ood_val: str | None = None
  id_val: str | None = None
  benchmark: str | None = None
  openood_root: str | None = None
  fit_max: int = 50000
  tune: str = "openood"
  flags: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Sets:
  """Everything one evaluation reads (images as arrays or `LazyImages`)."""
  train_x: Any                 # fitting: training images and labels
  train_y: np.ndarray
  num_classes: int
  id_val: tuple                # (images, labels or None)
  id_test: tuple
  ood_val: Any                 # None: no search, every detector at its defaults
  ood: dict                    # OOD test sets by name
  groups: dict[str, list[str]]
  hint: str                    # benchmark or base name (picks NAC's grid)
  describe: str


def build_sets(cfg: DetectConfig, shape, log) -> Sets:
  max_ood = cfg.max_ood or None
  extra = parse_ood(cfg.ood)
  spec = lambda s, name, n=max_ood: imagesets.open_spec(s, shape, name=name, data_dir=cfg.data_dir,
                                                        max_n=n, seed=cfg.seed)
  if cfg.benchmark:
    bench = openood.parse(cfg.benchmark)
    b = openood.load(bench, cfg.openood_root, shape, max_ood, cfg.seed)
    ood = {**b.ood, **{n: spec(s, n) for n, s in extra.items()}}
    groups = {**b.groups, **({"extra": list(extra)} if extra else {})}
    sets = Sets(train_x=b.id_train, train_y=b.id_train.labels, num_classes=bench.num_classes,
                id_val=(b.id_val, b.id_val.labels), id_test=(b.id_test, b.id_test.labels),
                ood_val=b.ood_val, ood=ood, groups=groups, hint=bench.id,
                describe=f"OpenOOD v1.5 {bench.id} from {cfg.openood_root}")
  else:
    ds = data.load(cfg.dataset, cfg.data_dir)
    if tuple(ds.test.x.shape[1:]) != tuple(shape):
      raise ConfigError(f"the runs take {'x'.join(map(str, shape))} inputs; {cfg.dataset} has "
                        f"{'x'.join(map(str, ds.test.x.shape[1:]))} images")
    if cfg.id_val:
      id_val, id_test = (spec(cfg.id_val, "id_val", None), None), (ds.test.x, ds.test.y)
    else:
      v, t = split_val(len(ds.test), cfg.val_fraction, cfg.seed)
      id_val, id_test = (ds.test.x[v], ds.test.y[v]), (ds.test.x[t], ds.test.y[t])
    ood, groups, ood_val = {}, {}, None
    if ds.ood is not None:  # held-out class
      v, t = split_val(len(ds.ood), cfg.val_fraction, cfg.seed + 1)
      heldout = f"heldout_class_{ds.held_out}"
      ood[heldout], ood_val = ds.ood.x[t], ds.ood.x[v]
      groups["heldout"] = [heldout]
    if extra:
      ood.update({n: spec(s, n) for n, s in extra.items()})
      groups["ood"] = list(extra)
    elif ds.base in ood_sets_lib.OOD_SETS:
      ood.update(ood_sets_lib.load(ds.base, shape, cfg.data_dir, max_ood, cfg.seed, log))
      groups.update(ood_sets_lib.groups(ds.base))
    if cfg.ood_val:
      ood_val = spec(cfg.ood_val, "ood_val")
    sets = Sets(train_x=ds.train.x, train_y=ds.train.y, num_classes=ds.num_classes,
                id_val=id_val, id_test=id_test, ood_val=ood_val, ood=ood, groups=groups,
                hint=ds.base, describe=cfg.dataset)
  noise = noise_sets(tuple(shape), min(len(sets.id_test[0]), max_ood or 10 ** 9), cfg.seed)
  sets.ood.update(noise)
  sets.groups["noise"] = list(noise)
  custom = parse_groups(cfg.ood_groups, list(sets.ood))
  if custom:
    sets.groups = custom
  if not sets.ood:
    raise ConfigError("no OOD test sets; pass --ood=NAME=SPEC")
  return sets


def group_table(rows: list[dict], sets: list[str], groups: dict, metric: str) -> tuple[dict, str]:
  """One metric for every OOD set and each group's unweighted mean (OpenOOD's near/far
  rows), per run and detector."""
  by = {}
  for r in rows:
    if r["metric"] == metric:
      by.setdefault((r["run"], r["detector"]), {})[r["ood_set"]] = r["value"]
  means = {}
  head = sets + [f"{g} (mean)" for g in groups]
  note = evaluation.METRIC_NOTES.get(metric, metric.upper())
  out = [f"### {metric}: {note}", "", "| run | detector | " + " | ".join(head) + " |",
         "|---|---|" + "---|" * len(head)]
  for (run, det), vals in by.items():
    g = {name: float(np.mean([vals[s] for s in members])) for name, members in groups.items()}
    means.setdefault(run, {})[det] = g
    out.append(f"| {run} | {det} | " + " | ".join(f"{vals[s]:.4f}" for s in sets)
               + "".join(f" | {g[n]:.4f}" for n in groups) + " |")
  return means, "\n".join(out)


def set_table(rows: list[dict], ood_name: str, chosen: dict) -> tuple[dict, str, list[dict]]:
  """One OOD set's metrics per run and detector, with the chosen hyperparameters."""
  mine = [r for r in rows if r["ood_set"] == ood_name]
  nested = {}
  for r in mine:
    nested.setdefault(r["run"], {}).setdefault(r["detector"], {})[r["metric"]] = r["value"]
  ms = evaluation.METRICS
  out = [f"### OOD set: {ood_name}", "",
         "| run | detector | " + " | ".join(ms) + " | chosen hyperparameters |",
         "|---|---|" + "---|" * (len(ms) + 1)]
  for run, dets in nested.items():
    for det, vals in dets.items():
      hp = chosen[run].get(det, chosen[run].get(f"{det}@{ood_name}", {}))
      hp_s = ", ".join(f"{k}={v}" for k, v in hp.items()) or "-"
      out.append(f"| {run} | {det} | " + " | ".join(f"{vals[m]:.4f}" for m in ms) + f" | {hp_s} |")
  return nested, "\n".join(out), mine


def input_shape(cfg, found: dict) -> tuple[int, ...]:
  shapes = {tuple(r["input_shape"]) for r in found.values() if r.get("input_shape")}
  if len(shapes) > 1:
    raise ConfigError(f"the runs of {cfg.dataset}/{cfg.model} take different input shapes "
                      f"{sorted(shapes)}; evaluate them separately")
  if shapes:
    return shapes.pop()
  return tuple(data.load(cfg.dataset, cfg.data_dir).test.x.shape[1:])


def run(cfg: DetectConfig, log=print) -> dict:
  detectors = list(cfg.detectors)
  found = common.pixel_runs(cfg)
  shape = input_shape(cfg, found)
  sets = build_sets(cfg, shape, log)
  out_dir = common.results_dir(cfg)
  log(f"{sets.describe}: fit on {len(sets.train_y)} training images (at most {cfg.fit_max}), "
      f"ID val {len(sets.id_val[0])} / test {len(sets.id_test[0])}; "
      f"OOD val {len(sets.ood_val) if sets.ood_val is not None else 'none (default hyperparameters)'}; "
      + ", ".join(f"{k} {len(v)}" for k, v in sets.ood.items()))
  rows, chosen, traces = [], {}, {}
  curves = {name: {} for name in sets.ood}
  for run_name, record in found.items():
    trained = runs.load(record, workdir=cfg.workdir, dataset=cfg.dataset, model_name=cfg.model,
                        num_classes=sets.num_classes, data=None if record.get("input_shape") else
                        data.load(cfg.dataset, cfg.data_dir).train)
    model = Model(trained, sets.train_x, np.asarray(sets.train_y), sets.num_classes,
                  seed=cfg.seed, arch=record.get("arch", cfg.model), benchmark=sets.hint,
                  fit_max=cfg.fit_max)
    usable = [d for d in detectors if not DETECTORS.get(d).unavailable(model)]
    with_nac = "nac" in usable
    inputs = lambda x, y=None: Inputs(model, x, y, with_nac=with_nac)
    id_val = inputs(*sets.id_val)
    ood = {k: inputs(v) for k, v in sets.ood.items()}
    if cfg.tune == "odin":
      ood_val, ood = {}, dict(ood)
      for k, v in sets.ood.items():
        val, test = split_val(len(v), min(1000, len(v) // 2) / len(v), cfg.seed + 2)
        ood_val[k], ood[k] = inputs(take(v, val)), inputs(take(v, test))
    else:
      ood_val = None if sets.ood_val is None else inputs(sets.ood_val)
    t0 = time.perf_counter()
    log(f"[{run_name}] {len(usable)} detectors")
    result = evaluation.run_detectors(model, inputs(*sets.id_test), ood, usable, id_val,
                                        ood_val, log=lambda m: log(f"[{run_name}] {m}"))
    log(f"[{run_name}] done in {time.perf_counter() - t0:.0f}s")
    rows += [{"run": run_name, **r} for r in result.rows]
    chosen[run_name], traces[run_name] = result.hyperparameters, {
        k: [{"hyperparameters": h, "val_auroc": a} for h, a in t] for k, t in result.search.items()}
    sharding.write_file(os.path.join(out_dir, f"detect_scores_{run_name}.npz"),
                        lambda f: np.savez_compressed(f, **{
                            f"{det}__{name}": s for det, per in result.scores.items()
                            for name, s in per.items()}))
    for name in sets.ood:
      curves[name][run_name] = {det: metrics.roc(per.get("id", per.get(f"id@{name}")), per[name])
                                for det, per in result.scores.items()}
  set_names = list(sets.ood)
  group_means, summary = {}, []
  for metric in ("auroc", "fpr95_openood", "fpr95"):
    group_means[metric], text = group_table(rows, set_names, sets.groups, metric)
    summary.append(text)
  heading = f"OOD detection, {sets.describe} ({cfg.model})"
  results = {"flags": cfg.flags, "versions": common.versions(), "mode": sets.describe,
             "splits": {"fit": int(min(len(sets.train_y), cfg.fit_max)),
                        "id_val": len(sets.id_val[0]), "id_test": len(sets.id_test[0]),
                        "ood_val": None if sets.ood_val is None else len(sets.ood_val),
                        **{k: len(v) for k, v in sets.ood.items()}},
             "metric_notes": evaluation.METRIC_NOTES, "groups": sets.groups,
             "group_means": group_means, "hyperparameters": chosen, "search": traces, "rows": rows}
  common.write_json(os.path.join(out_dir, "detect.json"), results)
  common.write_markdown(os.path.join(out_dir, "detect_summary.md"), heading, "\n\n".join(summary))
  sharding.write_text(os.path.join(out_dir, "detect_rows.csv"), evaluation.rows_to_csv(rows))
  md = []
  for name in set_names:
    nested, text, mine = set_table(rows, name, chosen)
    md.append(text)
    common.write_tables(out_dir, f"detect_{name}", nested, heading, text)
    sharding.write_text(os.path.join(out_dir, f"detect_{name}.csv"), evaluation.rows_to_csv(mine))
    plots.roc_curves(curves[name], os.path.join(out_dir, f"detect_roc_{name}.png"),
                     f"{sets.describe} vs {name}")
  log("\n" + "\n\n".join(md + summary) + f"\n\nwrote {out_dir}/detect_*.{{md,json,csv,npz,png}}")
  return results


def main(argv):
  del argv
  names = [n.strip() for n in FLAGS.detectors if n.strip()]
  if not names:
    raise ConfigError(f"--detectors is empty; valid: {', '.join(DETECTORS.names())}")
  for n in names:
    DETECTORS.lookup(n)
  if not 0 < FLAGS.val_fraction < 1:
    raise ConfigError("--val_fraction must be between 0 and 1")
  if FLAGS.max_ood < 0:
    raise ConfigError("--max_ood must be 0 (all) or more")
  from ncg_jax import models
  models.MODELS.lookup(FLAGS.model)
  dataset = FLAGS.dataset
  if FLAGS.benchmark:
    bench = openood.parse(FLAGS.benchmark)
    if not FLAGS.openood_root:
      raise ConfigError("--benchmark needs --openood_root")
    if not FLAGS["dataset"].present:
      dataset = bench.id
  cfg = DetectConfig(dataset=dataset, model=FLAGS.model, workdir=FLAGS.workdir,
                     data_dir=FLAGS.data_dir, seed=FLAGS.seed, detectors=tuple(names),
                     **{k: getattr(FLAGS, k) for k in (
                         "val_fraction", "max_ood", "ood_groups", "ood_val", "id_val",
                         "benchmark", "openood_root", "fit_max", "tune")},
                     ood=tuple(FLAGS.ood), flags=common.own_flags())
  parse_ood(cfg.ood)
  run(cfg)


if __name__ == "__main__":
  common.run(main, unused=common.TRAINING_FLAGS + ("norm", "eps", "space", "nn_backend",
                                                   "robust_n"),
             why="it scores trained or imported runs; nothing is trained or attacked")
