"""What every experiment entry point shares: flags, the config they build, error exits.

Flags stop here: `config_from_flags()` turns them into an `ExperimentConfig`, and the
experiments' `run(cfg)` functions never read flags.
"""
import dataclasses
import json
import os
import platform
import sys

import numpy as np
from absl import app, flags, logging

from ncg_jax import data, recipes, runs, sharding  # first ncg_jax import: XLA:CPU settings
from ncg_jax.registry import ConfigError
from ncg_jax.train.checkpoint import CheckpointError
from ncg_jax.train.losses import AttackConfig
from ncg_jax.spaces import RunSpec  # noqa: F401 (part of ExperimentConfig)
from ncg_jax.train.trainer import TrainConfig, TrainingDiverged

flags.DEFINE_string("dataset", "digitswo9", "<base> or <base>wo<k>, e.g. digitswo9.")
flags.DEFINE_string("model", "cnn002", "Network for pixel space (see ncg_jax.models).")
flags.DEFINE_list("losses", ["ce", "trades6", "advce"],
                  "Training losses: ce, trades<beta> (e.g. trades6), advce; or names of imported "
                  "runs (python -m ncg_jax.models.import_weights).")
flags.DEFINE_string("feature_network", "ce", "The pixel-space run (a loss or an imported run) "
                    "whose penultimate features are the feature space.")
flags.DEFINE_string("workdir", "workdir", "Where runs (checkpoints) and results live.")
flags.DEFINE_string("data_dir", None, "TFDS data directory (default: TFDS's own, "
                    "which honours TFDS_DATA_DIR).")
flags.DEFINE_integer("seed", 0, "Seed for initialisation, data order and dropout.")
flags.DEFINE_integer("epochs", None, "Training epochs (default: the dataset's recipe).")
flags.DEFINE_integer("batch_size", None, "Training batch size (default: recipe).")
flags.DEFINE_float("lr", None, "Learning rate (default: recipe).")
flags.DEFINE_string("optimizer", None, "sgd or adam (default: recipe).")
flags.DEFINE_enum("space", "both", ["pixel", "feature", "both"], "Where to search neighbours "
                  "(experiments.ncg, .corrupted).")
flags.DEFINE_string("nn_backend", "auto", "Nearest-neighbour backend: auto, faiss or jax.")
flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16"],
                  "Model compute precision; bfloat16 keeps float32 parameters, and attack "
                  "inputs, perturbations and distances stay float32.")
flags.DEFINE_bool("augment", None, "Random crop + horizontal flip in pixel-space training "
                  "(default: the recipe's, off as in the paper).")
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first (one process "
                  "per host; arguments auto-detected on TPU, SLURM and Open MPI).")
flags.DEFINE_string("coordinator_address", None, "With --multihost: host:port of process 0.")
flags.DEFINE_integer("num_processes", None, "With --multihost: number of processes.")
flags.DEFINE_integer("process_id", None, "With --multihost: this process's index.")
flags.DEFINE_string("norm", "l2", "Threat model of the robust losses: l2 or linf.")
flags.DEFINE_list("eps", ["2"], "Radii of the robust losses' perturbation ball: every robust "
                  "loss is trained at each (--eps=2,4,8: TRADES(2), (4), (8) side by side).")
flags.DEFINE_integer("attack_steps", 10, "Inner maximisation steps of the robust losses.")
flags.DEFINE_float("attack_step_size", None, "Inner step size (default 2 * eps / steps).")
flags.DEFINE_string("feature_layer", None, "Named intermediate of --feature_network that is "
                    "the feature space (default: the paper's: CNN002's 1,024-d conv_features, "
                    "else the penultimate features).")
flags.DEFINE_integer("feature_width", None, "Width of the 3-layer feature MLP heads (paper: "
                     "256, LargeMLP; 1024, LargeMLPv4, for ImgNet100; default: the recipe's).")
flags.DEFINE_float("feature_lr", None, "Feature heads' learning rate (default: recipe).")
flags.DEFINE_string("feature_optimizer", None, "Feature heads' optimizer (default: recipe).")
flags.DEFINE_integer("feature_batch_size", None, "Feature heads' batch size (default: recipe).")
flags.DEFINE_integer("feature_epochs", None, "Feature heads' epochs (default: recipe).")
flags.DEFINE_list("feature_eps", None, "Robust feature heads' radii (default: --eps).")
flags.DEFINE_bool("tensorboard", False, "Also write training curves as TensorBoard events in "
                  "<run>/tensorboard (needs tensorboardX: pip install 'ncg_jax[tensorboard]').")
flags.DEFINE_integer("robust_n", 1000, "ID test examples (a seeded sample) on which robust "
                     "accuracy is measured (experiments.ncg, .robustness); 0 skips it.")

FLAGS = flags.FLAGS

# Flags that shape training: entry points that only load trained runs reject them (`run`).
TRAINING_FLAGS = ("losses", "feature_network", "epochs", "batch_size", "lr", "optimizer",
                  "precision", "augment", "attack_steps", "attack_step_size", "feature_layer",
                  "feature_width", "feature_lr", "feature_optimizer", "feature_batch_size",
                  "feature_epochs", "feature_eps", "tensorboard")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  dataset: str
  model: str
  runs: tuple[RunSpec, ...]  # pixel space: trained losses (x eps) and imported runs
  feature_runs: tuple[RunSpec, ...]  # feature-space heads (attacks without the [0, 1] box)
  workdir: str
  data_dir: str | None
  seed: int
  nn_backend: str
  pixel: TrainConfig
  feature: TrainConfig
  attack: AttackConfig  # the first eps: robust accuracy of the natural and imported runs
  flags: dict
  feature_network: str = "ce"  # the run (label) whose features are the feature space
  feature_layer: str | None = None  # None: the architecture's (models.feature_layer)
  feature_width: int = 256
  spaces: tuple[str, ...] = runs.SPACES  # --space
  robust_n: int = 1000  # ID test examples for robust accuracy; 0 skips it


def _override(cfg: TrainConfig, **kw) -> TrainConfig:
  kw = {k: v for k, v in kw.items() if v is not None}
  if "epochs" in kw and "milestones" not in kw:  # keep the schedule's shape: x0.1 at the same fractions
    kw["milestones"] = tuple(round(m * kw["epochs"] / cfg.epochs) for m in cfg.milestones)
  return dataclasses.replace(cfg, **kw)


def config_from_flags(dataset: str | None = None,
                      loss_names: tuple[str, ...] | None = None) -> ExperimentConfig:
  """`dataset` replaces --dataset (experiments.corrupted passes the clean name of `<name>-c`),
  `loss_names` --losses (experiments.train passes its one --loss)."""
  from ncg_jax import models, neighbors
  from ncg_jax.train import losses, optim
  dataset = dataset or FLAGS.dataset
  base, _ = data.parse_name(dataset)
  models.MODELS.lookup(FLAGS.model)
  loss_names = loss_names or tuple(s.strip() for s in FLAGS.losses if s.strip())
  if not loss_names:
    raise ConfigError(f"--losses is empty; valid: {', '.join(losses.LOSSES.names())}")
  eps = _floats("eps", FLAGS.eps)
  feature_eps = _floats("feature_eps", FLAGS.feature_eps) if FLAGS.feature_eps else eps
  imported = None
  for name in dict.fromkeys(loss_names + (FLAGS.feature_network,)):
    if name in losses.LOSSES:
      continue
    imported = imported if imported is not None else runs.imported_runs(
        FLAGS.workdir, dataset, FLAGS.model, FLAGS.seed)
    if name not in imported:
      raise ConfigError(
          f"unknown loss or run '{name}'; losses: {', '.join(losses.LOSSES.names())}; imported runs "
          f"for {dataset}/{FLAGS.model}/seed{FLAGS.seed} in {FLAGS.workdir}: {', '.join(imported) or 'none'}")
  if FLAGS.optimizer is not None:
    optim.OPTIMIZERS.lookup(FLAGS.optimizer)
  neighbors.resolve_backend(FLAGS.nn_backend)
  if FLAGS.feature_optimizer is not None:
    optim.OPTIMIZERS.lookup(FLAGS.feature_optimizer)
  if FLAGS.robust_n < 0:
    raise ConfigError("--robust_n must be 0 (skip) or positive")
  for name in ("epochs", "batch_size", "feature_epochs", "feature_batch_size", "feature_width"):
    if getattr(FLAGS, name) is not None and getattr(FLAGS, name) < 1:
      raise ConfigError(f"--{name} must be at least 1")
  attack = lambda e, clip=(0.0, 1.0): AttackConfig(
      norm=FLAGS.norm, eps=e, steps=FLAGS.attack_steps, step_size=FLAGS.attack_step_size, clip=clip)

  def specs(names, radii, clip):
    out = []
    for n in names:
      robust = n in losses.LOSSES and losses.is_robust(n)
      out += [RunSpec(n, attack(e, clip)) for e in radii] if robust else [RunSpec(n)]
    return tuple(out)
  trainable = tuple(n for n in loss_names if n in losses.LOSSES) or (losses.NATURAL,)
  pixel_runs = specs(loss_names, eps, (0.0, 1.0))
  labels = [r.name for r in pixel_runs]
  if FLAGS.feature_network not in labels and FLAGS.feature_network not in (losses.NATURAL, *loss_names):
    raise ConfigError(f"--feature_network={FLAGS.feature_network} is none of the runs "
                      f"({', '.join(labels)}) nor {losses.NATURAL}")
  pixel = _override(recipes.pixel(base), augment=FLAGS.augment, epochs=FLAGS.epochs,
                    batch_size=FLAGS.batch_size, lr=FLAGS.lr, optimizer=FLAGS.optimizer,
                    seed=FLAGS.seed, precision=FLAGS.precision, tensorboard=FLAGS.tensorboard)
  feature = _override(recipes.feature(base), epochs=FLAGS.feature_epochs,
                      batch_size=FLAGS.feature_batch_size, lr=FLAGS.feature_lr,
                      optimizer=FLAGS.feature_optimizer, seed=FLAGS.seed,
                      precision=FLAGS.precision, tensorboard=FLAGS.tensorboard)
  return ExperimentConfig(
      dataset=dataset, model=FLAGS.model, runs=pixel_runs,
      feature_runs=specs(trainable, feature_eps, None), workdir=FLAGS.workdir,
      data_dir=FLAGS.data_dir, seed=FLAGS.seed, nn_backend=FLAGS.nn_backend,
      pixel=pixel, feature=feature, attack=attack(eps[0]), flags=own_flags(),
      feature_network=FLAGS.feature_network, feature_layer=FLAGS.feature_layer,
      feature_width=FLAGS.feature_width or recipes.feature_width(base),
      spaces=runs.SPACES if FLAGS.space == "both" else (FLAGS.space,),
      robust_n=FLAGS.robust_n)


def _floats(name: str, values: list[str]) -> tuple[float, ...]:
  try:
    out = tuple(float(v) for v in values)
  except ValueError:
    raise ConfigError(f"--{name}={','.join(values)}: expected comma-separated numbers") from None
  if not out or min(out) <= 0:
    raise ConfigError(f"--{name} needs positive radii")
  return out



def own_flags() -> dict:
  """The values of the flags defined by the experiments (not absl's own)."""
  return {f.name: f.value for module, fs in FLAGS.flags_by_module_dict().items()
          if module.startswith("experiments") or module == sys.argv[0] for f in fs}


def versions() -> dict:
  """Software and machine of a result: float sums' order, and so the robust trainings'
  figures, depend on the jaxlib, the device, the host CPU (`xla_cpu.host_cpu`) and the XLA
  settings in effect."""
  import flax
  import jax
  import jaxlib
  import numpy
  import optax
  import ncg_jax
  from ncg_jax import xla_cpu
  return {"ncg_jax": ncg_jax.__version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
          "flax": flax.__version__, "optax": optax.__version__, "numpy": numpy.__version__,
          "python": platform.python_version(), "backend": jax.default_backend(),
          "devices": [str(d) for d in jax.devices()], "device_kind": jax.devices()[0].device_kind,
          "host_cpu": xla_cpu.host_cpu(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "ncg_jax_cpu_settings": xla_cpu.configure()}


def robust_on_test(trained, x: np.ndarray, y: np.ndarray, attack: AttackConfig, robust_n: int,
                   seed: int) -> dict:
  """Robust accuracy (`attacks.robust_accuracy_over`) of a run on a seeded sample of at most
  `robust_n` ID test inputs at `attack`'s norm and eps, with what was attacked recorded."""
  from ncg_jax.attacks import robust_accuracy_over
  idx = np.sort(np.random.default_rng([seed, 11]).permutation(len(y))[:robust_n])
  rob = robust_accuracy_over(trained, x[idx], y[idx], eps=attack.eps, norm=attack.norm,
                             clip=attack.clip, seed=seed)
  return {**rob, "norm": attack.norm, "eps": attack.eps, "n": int(len(idx)),
          "attacks": "PGD-20 x 2 restarts, APGD-CE-100, APGD-DLR-100"}


def write_json(path: str, obj) -> None:
  sharding.write_text(path, json.dumps(obj, indent=1, allow_nan=True))


def results_dir(cfg: ExperimentConfig) -> str:
  """Where an experiment writes its results: beside the runs of its dataset/model/seed."""
  return runs.seed_dir(cfg.workdir, cfg.dataset, cfg.model, cfg.seed)


def load_heldout(cfg: ExperimentConfig) -> data.Dataset:
  ds = data.load(cfg.dataset, cfg.data_dir)
  if ds.ood is None:
    raise ConfigError(f"--dataset={cfg.dataset} holds no class out; use <base>wo<k>")
  return ds


def pixel_runs(cfg: ExperimentConfig) -> dict[str, dict]:
  """Every pixel-space run trained in the workdir for this dataset/model/seed."""
  found = runs.find(cfg.workdir, cfg.dataset, cfg.model, cfg.seed, "pixel")
  if not found:
    raise ConfigError(f"no trained pixel-space runs for {cfg.dataset}/{cfg.model}/seed{cfg.seed} "
                      f"in {cfg.workdir}; run experiments.ncg or experiments.train first, or import a "
                      "checkpoint (python -m ncg_jax.models.import_weights)")
  return found


def write_markdown(path: str, heading: str, md: str) -> None:
  sharding.write_text(path, f"# {heading}\n\n{md}\n")


def write_tables(out_dir: str, stem: str, results: dict, heading: str, md: str) -> None:
  """<stem>.json (every figure) and <stem>.md (the printed table)."""
  write_json(os.path.join(out_dir, f"{stem}.json"), results)
  write_markdown(os.path.join(out_dir, f"{stem}.md"), heading, md)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with a bad flag (unknown, or a value outside an enum) as one line on
  stderr naming the valid values and exit code 2, like every other bad input."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def reject_unused(unused: tuple[str, ...], why: str) -> None:
  """A shared flag given on the command line to an entry point that does not use it is an
  error (one line, exit 2), not silently ignored."""
  given = [f"--{n}" for n in unused if FLAGS[n].present]
  if given:
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    prog = spec.name if spec else os.path.basename(sys.argv[0])
    raise ConfigError(f"{', '.join(given)}: not used by {prog} ({why})")


def run(main, unused: tuple[str, ...] = (), why: str = "") -> None:
  """app.run with user errors as one line on stderr: bad input exits 2, a failed run 1.
  `unused`: shared flags this entry point does not read (`why` says why), rejected if given."""
  def wrapped(argv):
    logging.set_verbosity(logging.WARNING)  # keep library INFO chatter (orbax, faiss) out
    sys.stdout.reconfigure(line_buffering=True)  # progress lines appear as they happen
    if FLAGS.multihost:
      sharding.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    try:
      reject_unused(unused, why)
      main(argv)
    except ConfigError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    except (CheckpointError, TrainingDiverged) as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)
  app.run(wrapped, flags_parser=parse_flags)
