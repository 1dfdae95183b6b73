"""Where runs live and how a run is trained or reused.

A run is one model trained with one loss in one space (pixel: the named network on images;
feature: an MLP head on the natural network's features). Its directory is
  <workdir>/<dataset>/<model>/seed<seed>/<space>/<run name>/
(`<dataset>` is `data.dir_name(dataset)`: user datasets' paths become one directory name)
holding `config.json` and orbax `checkpoints/`. `experiments.train`, `experiments.ncg` and
every later experiment find the same runs there. Imported classifiers
(`python -m ncg_jax.models.import_weights`) are runs too: `config.json` says `imported`, the
checkpoint holds their variables, and they are loaded, never trained.
"""
import dataclasses
import glob
import json
import os

import jax
import jax.numpy as jnp

from ncg_jax import models, sharding
from ncg_jax.data import Split, dir_name
from ncg_jax.registry import ConfigError
from ncg_jax.train import checkpoint, losses, optim
from ncg_jax.train.trainer import Trained, TrainConfig, settings, train

SPACES = ("pixel", "feature")
# TrainConfig fields a rerun of the same run may change (they do not shape the model)
RERUN_MAY_CHANGE = ("epochs", "tensorboard")


def seed_dir(workdir: str, dataset: str, model: str, seed: int) -> str:
  """<workdir>/<dataset>/<model>/seed<seed>: the runs' parent and the experiments' results."""
  return os.path.join(workdir, dir_name(dataset), model, f"seed{seed}")


def run_dir(workdir: str, dataset: str, model: str, seed: int, space: str, run: str) -> str:
  return os.path.join(seed_dir(workdir, dataset, model, seed), space, run)


def feature_space_dir(network: str, layer: str, default_layer: str) -> str:
  """Where feature-space heads live: `feature` on the natural network's default feature
  layer, `feature-<run>` on another run's, `...@<layer>` on another layer."""
  return ("feature" + ("" if network == losses.NATURAL else f"-{network}")
          + ("" if layer == default_layer else f"@{layer}"))


def train_or_load(*, workdir: str, dataset: str, model_name: str, space: str, loss: str,
                  data: Split, num_classes: int, cfg: TrainConfig, attack=None,
                  fields: dict | None = None, log=print) -> Trained:
  """The run of `loss` in `space` (pixel, or a feature-space directory from
  `feature_space_dir`), trained or resumed as needed. A pixel-space name that is no
  registered loss is an imported run, loaded as it is. `fields` are architecture fields
  (feature heads' widths)."""
  if space == "pixel" and loss not in losses.LOSSES:
    directory = run_dir(workdir, dataset, model_name, cfg.seed, space, loss)
    record = read_record(directory)
    if not (record and record.get("imported")):
      raise ConfigError(f"'{loss}' is neither a loss ({', '.join(losses.LOSSES.names())}) nor an "
                        f"imported run in {os.path.dirname(directory)}")
    log(f"[{space}/{loss}] imported {record['source']} {record['arch']} from {directory}")
    trained = load_imported(record, directory, num_classes)
    if tuple(trained.input_shape) != tuple(data.x.shape[1:]):
      raise ConfigError(f"run {loss} takes {'x'.join(map(str, trained.input_shape))} inputs; "
                        f"{dataset} has {'x'.join(map(str, data.x.shape[1:]))} images")
    return trained
  cfg = dataclasses.replace(cfg, loss=loss)
  arch = model_name if space == "pixel" else "mlp"
  if attack is not None and space != "pixel":
    attack = dataclasses.replace(attack, clip=None)  # features are unbounded
  name = (losses.run_name(loss, attack) + ("" if cfg.precision == "float32" else f"-{cfg.precision}")
          + ("-aug" if cfg.augment else ""))
  directory = run_dir(workdir, dataset, model_name, cfg.seed, space, name)
  log(f"[{space}/{loss}] {arch} on {len(data)} examples -> {directory}")
  model = models.create(arch, num_classes, dtype=jnp.dtype(cfg.precision), **(fields or {}))
  write_config(directory, settings(model, data, cfg, attack, arch),
               meta={"arch": arch, "space": space})
  return train(model, data, cfg, directory, attack=attack, log=log)


def write_config(directory: str, record: dict, meta: dict | None = None) -> None:
  """Writes <run>/config.json: `record` (`trainer.settings`) and the descriptive `meta`. If
  the run exists, every setting that shapes training (all but `RERUN_MAY_CHANGE`, e.g.
  `epochs`, which a rerun may extend, and `meta`) must match it: a mismatch is an error,
  never a silent resume of another run's checkpoint."""
  meta = meta or {}
  path = os.path.join(directory, "config.json")
  old = read_record(directory)
  if old is not None:
    defaults = json.loads(json.dumps(dataclasses.asdict(TrainConfig())))  # fields added later
    # settings recorded only by later versions (input_shape, fields) are compared when present
    diff = [k for k in record if k not in RERUN_MAY_CHANGE and k not in meta
            and (k in old or k in defaults) and old.get(k, defaults.get(k)) != record[k]]
    if diff:
      raise ConfigError(
          f"{directory} holds a run with other settings "
          f"({', '.join(f'{k}={old.get(k)!r}' for k in diff)}); use another --workdir or "
          "delete that run")
  sharding.write_text(path, json.dumps({**meta, **record}, indent=1))


def imported_runs(workdir: str, dataset: str, model_name: str, seed: int) -> list[str]:
  return [name for name, r in find(workdir, dataset, model_name, seed, "pixel").items()
          if r.get("imported")]


def find(workdir: str, dataset: str, model_name: str, seed: int, space: str) -> dict[str, dict]:
  """The finished or interrupted runs of one space: {run name: config.json record plus its
  `run_dir`}, in the order ce first, then by name."""
  found = {}
  for path in sorted(glob.glob(os.path.join(run_dir(workdir, dataset, model_name, seed, space, "*"),
                                            "config.json"))):
    with open(path) as f:
      record = json.load(f)
    if os.path.isdir(os.path.join(os.path.dirname(path), "checkpoints")):
      found[os.path.basename(os.path.dirname(path))] = {**record, "run_dir": os.path.dirname(path)}
  return dict(sorted(found.items(), key=lambda kv: (kv[1].get("loss") != "ce", kv[0])))


def read_record(directory: str) -> dict | None:
  path = os.path.join(directory, "config.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def save_imported(trained: Trained, record: dict, directory: str) -> None:
  """Writes an imported classifier as a run: config.json and its variables (orbax)."""
  old = read_record(directory)
  if old is not None and old.get("sha256") != record["sha256"]:
    raise ConfigError(f"{directory} already holds another run ({old.get('checkpoint') or old.get('loss')}); "
                      "pass another --name or delete that run")
  sharding.write_text(os.path.join(directory, "config.json"), json.dumps(record, indent=1))
  mngr = checkpoint.manager(os.path.join(directory, "checkpoints"))
  if mngr.latest_step() is None:  # the same file imported again: nothing to write
    checkpoint.save(mngr, 1, {"params": trained.params, "model_state": trained.model_state})
  mngr.wait_until_finished()


def load_imported(record: dict, directory: str, num_classes: int | None = None) -> Trained:
  if num_classes is not None and record["num_classes"] != num_classes:
    raise ConfigError(f"{directory} classifies {record['num_classes']} classes; the dataset "
                      f"has {num_classes}")
  model = models.create(record["arch"], record["num_classes"], **record.get("fields", {}))
  shape = tuple(record["input_shape"])
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape))))
  like = {"params": variables["params"],
          "model_state": {k: v for k, v in variables.items() if k in models.STATE_COLLECTIONS}}
  like = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), like)
  mngr = checkpoint.manager(os.path.join(directory, "checkpoints"))
  state = checkpoint.restore(mngr, mngr.latest_step(), sharding.replicate(like))
  return Trained(model, state["params"], state["model_state"], shape)


def load(record: dict, *, workdir: str, dataset: str, model_name: str, num_classes: int,
         data: Split | None = None) -> Trained:
  """Restores the finished run described by a `find` record; never trains. An interrupted
  run is a ConfigError naming the command that finishes it. `data` gives the input shape
  of runs whose config.json predates recording it."""
  if record.get("imported"):
    return load_imported(record, run_dir(workdir, dataset, model_name, record.get("seed", 0),
                                         "pixel", record["name"]), num_classes)
  directory = record["run_dir"]
  fields = {f.name for f in dataclasses.fields(TrainConfig)}
  cfg = TrainConfig(**{k: tuple(v) if k == "milestones" else v
                       for k, v in record.items() if k in fields})
  shape = record.get("input_shape") or (list(data.x.shape[1:]) if data is not None else None)
  if shape is None:
    raise ConfigError(f"{directory}/config.json does not record the input shape; pass the data")
  model = models.create(record.get("arch", model_name), num_classes,
                        dtype=jnp.dtype(cfg.precision), **record.get("fields", {}))
  x = jnp.zeros((1, *shape))
  mngr = checkpoint.manager(os.path.join(directory, "checkpoints"))
  done = mngr.latest_step() or 0
  if done < cfg.epochs:
    attack = record.get("attack")
    robust = f" --norm={attack['norm']} --eps={attack['eps']:g}" if attack else ""
    raise ConfigError(
        f"run {directory} is unfinished (epoch {done} of {cfg.epochs}); finish it with: "
        f"python -m experiments.train --dataset={dataset} --model={model_name} "
        f"--loss={record['loss']}{robust} --seed={cfg.seed} --workdir={workdir} "
        f"(and the recipe flags it was started with), or rerun the experiment that trained it")

  def like():
    params, state = models.init(model, jax.random.key(0), x)
    steps = max(1, record.get("num_examples", cfg.batch_size) // cfg.batch_size)
    tx = optim.make_optimizer(cfg.optimizer, cfg.lr, cfg.momentum, cfg.milestones, steps)
    return {"params": params, "model_state": state, "opt": tx.init(params)}
  abstract = jax.eval_shape(like)
  zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abstract)
  state = checkpoint.restore(mngr, done, sharding.replicate(zeros))
  return Trained(model, state["params"], state["model_state"], tuple(shape))
