"""The training loop: a jit-compiled step (`make_train_step`), per-epoch checkpoints, exact resume.

`train(model, data, cfg, run_dir)` trains `model` on `data` (a `Split` of uint8 images or
float features) and returns a `Trained` model. The data order and the dropout keys are
functions of (seed, epoch, step), and the optimizer state is checkpointed after every
epoch, so a run resumed from its latest checkpoint ends with exactly the parameters of an
uninterrupted run.
"""
import dataclasses
import functools
import json
import os
import time
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ncg_jax import models, sharding
from ncg_jax.models.trained import Trained, to_input
from ncg_jax.batching import train_batches
from ncg_jax.data import Split
from ncg_jax.registry import ConfigError
from ncg_jax.train import checkpoint, losses, optim


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  loss: str = "ce"
  optimizer: str = "sgd"
  lr: float = 0.01
  momentum: float = 0.9
  batch_size: int = 128
  epochs: int = 70
  milestones: tuple[int, ...] = (40, 50, 60)
  seed: int = 0
  precision: str = "float32"  # or "bfloat16": model compute only; parameters stay float32
  augment: bool = False  # random crop (4-pixel zero padding) + horizontal flip of images
  tensorboard: bool = False  # also write the epoch metrics as TensorBoard events (tensorboardX)


class TrainingDiverged(RuntimeError):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


def augment(x_BxHxWxC: jnp.ndarray, key: jax.Array, pad: int = 4) -> jnp.ndarray:
  """Random crop after `pad` pixels of zero padding, and a random horizontal flip, per image
  (the standard CIFAR augmentation of He et al. 2016)."""
  b, h, w, _ = x_BxHxWxC.shape
  k_crop, k_flip = jax.random.split(key)
  offsets = jax.random.randint(k_crop, (b, 2), 0, 2 * pad + 1)
  padded = jnp.pad(x_BxHxWxC, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, img.shape[-1]))
  x = jax.vmap(crop)(padded, offsets)
  flip = jax.random.bernoulli(k_flip, 0.5, (b, 1, 1, 1))
  return jnp.where(flip, x[:, :, ::-1], x)


def feed(data: Split, idx: np.ndarray):
  """One training batch on the devices: this process's rows of the batch `idx` gathered from
  host memory and placed along the mesh's data axis (the transfer runs while the previous
  step computes: nothing here waits for the devices)."""
  rows = sharding.local(idx)  # this process reads only its rows of the batch
  return sharding.shard(data.x[rows], data.y[rows])


def make_forward(model: nn.Module) -> Callable:
  """forward(params, model_state, x, train, key) -> (logits, new_model_state)."""
  def forward(params, model_state, x, train: bool = False, key=None):
    variables = {"params": params, **model_state}
    if not train:
      return model.apply(variables, x, train=False)[0], model_state
    mutable = list(model_state) or False
    out = model.apply(variables, x, train=True, rngs={"dropout": key}, mutable=mutable)
    (logits, _), new_state = out if mutable else (out, model_state)
    return logits, new_state
  return forward


def make_train_step(model: nn.Module, loss_fn: Callable, tx: optax.GradientTransformation,
                    augment_images: bool = False, separate_update: bool | None = None):
  """step(state, x, y, key) -> (new state, (loss, accuracy)). `state` is {"params",
  "model_state", "opt"}; its parameter and optimizer buffers are donated (do not reuse it).

  One program on accelerators. On the CPU (`separate_update=None`) two: the loss and its
  gradient, then the optimizer's update. In one program XLA:CPU interleaves the update's small
  per-parameter fusions with the backward pass's convolutions, and CNN002's CE step with SGD
  momentum at batch 128 took 6% longer (paired alternating calls on the 2-core VM; the cause
  inside XLA's executor was not isolated); the robust steps, ten times longer, took about the
  same either way (`benchmarks/RESULTS.md`). Both forms give bitwise the same states
  (`tests/test_train.py`).

  Steps are cached per (model, loss_fn, tx, augmentation), and on the CPU the gradient program
  per (model, loss_fn, augmentation): with `losses.make_loss` and `optim.make_optimizer`
  returning one object per setting, the runs of a held-out-class sweep or of several seeds
  compile each architecture's gradient once per process, not once per `train` call."""
  if separate_update is None:
    separate_update = jax.default_backend() == "cpu"
  try:
    hash((model, loss_fn, tx))
  except TypeError:  # e.g. a model with a dict attribute: built afresh, compiled per call
    return _build_train_step(model, loss_fn, tx, augment_images, separate_update, cache=False)
  return _cached_train_step(model, loss_fn, tx, augment_images, separate_update)


def _gradient_fn(model, loss_fn, augment_images):
  forward = make_forward(model)

  def gradient(state, x, y, key):
    x = to_input(x)
    if augment_images and x.ndim == 4:
      key, k_aug = jax.random.split(key)
      x = augment(x, k_aug)

    def objective(params):
      return loss_fn(forward, params, state["model_state"], x, y, key)
    (loss, (model_state, logits)), grads = jax.value_and_grad(objective, has_aux=True)(
        state["params"])
    acc = jnp.mean(jnp.argmax(logits, -1) == y)
    return grads, model_state, (loss, acc)
  return gradient


def _jit_gradient(model, loss_fn, augment_images):
  return jax.jit(_gradient_fn(model, loss_fn, augment_images))


_cached_gradient = functools.lru_cache(maxsize=64)(_jit_gradient)


def _build_train_step(model, loss_fn, tx, augment_images, separate_update, cache=True):
  def update(params, opt, grads):
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt

  def chain(gradient_fn, update_fn):
    def step(state, x, y, key):
      grads, model_state, metrics = gradient_fn(state, x, y, key)
      params, opt = update_fn(state["params"], state["opt"], grads)
      return {"params": params, "model_state": model_state, "opt": opt}, metrics
    return step

  if not separate_update:
    return jax.jit(chain(_gradient_fn(model, loss_fn, augment_images), update), donate_argnums=0)
  gradient = (_cached_gradient if cache else _jit_gradient)(model, loss_fn, augment_images)
  return chain(gradient, jax.jit(update, donate_argnums=(0, 1)))


_cached_train_step = functools.lru_cache(maxsize=64)(_build_train_step)


def _tensorboard_writer(run_dir: str):
  """A TensorBoard event writer in <run>/tensorboard (process 0; tensorboardX, which needs
  no TensorFlow), or None on other processes."""
  if not sharding.is_writer():
    return None
  try:
    from tensorboardX import SummaryWriter
  except ImportError:
    raise ConfigError("--tensorboard needs tensorboardX: pip install 'ncg_jax[tensorboard]'") from None
  return SummaryWriter(os.path.join(run_dir, "tensorboard"))


def _append_metrics(run_dir: str, record: dict) -> None:
  """One JSON line per epoch in <run>/metrics.jsonl (process 0). A resumed run appends from
  its checkpoint's epoch on, so the file may list an interrupted epoch twice; the last
  line of an epoch is the one the checkpoint holds."""
  if sharding.is_writer():
    with open(os.path.join(run_dir, "metrics.jsonl"), "a") as f:
      f.write(json.dumps(record) + "\n")


def settings(model: nn.Module, data: Split, cfg: TrainConfig,
             attack: losses.AttackConfig | None = None, arch: str | None = None) -> dict:
  """Everything that shapes a training run, JSON-able: what a run directory's config.json
  records (`runs.write_config` compares it with an existing run's)."""
  out = {**dataclasses.asdict(cfg), "model": type(model).__name__, "num_examples": len(data),
         "input_shape": list(data.x.shape[1:])}
  if arch:
    out["fields"] = models.fields_of(model, arch)
  if losses.is_robust(cfg.loss):
    out["attack"] = dataclasses.asdict(attack or losses.AttackConfig())
  return json.loads(json.dumps(out))


def train(model: nn.Module, data: Split, cfg: TrainConfig, run_dir: str,
          attack: losses.AttackConfig | None = None,
          log: Callable[[str], None] = print) -> Trained:
  """Trains (or resumes from the latest checkpoint in `run_dir/checkpoints`). Whether that
  checkpoint belongs to a run with the same settings is the run directory's business
  (`runs.train_or_load` checks config.json first)."""
  root = jax.random.key(cfg.seed)
  params, model_state = models.init(model, root, to_input(jnp.asarray(data.x[:1])))
  steps = train_batches(len(data), cfg.batch_size, cfg.seed, 0).shape[0]
  tx = optim.make_optimizer(cfg.optimizer, cfg.lr, cfg.momentum, cfg.milestones, steps)
  state = {"params": params, "model_state": model_state, "opt": tx.init(params)}
  sharding.check_batch(cfg.batch_size)
  state = sharding.replicate(state)  # restored checkpoints take the same placement

  mngr = checkpoint.manager(os.path.join(run_dir, "checkpoints"))
  start = mngr.latest_step() or 0
  if start:
    state = checkpoint.restore(mngr, start, state)
    if start >= cfg.epochs:
      if start > cfg.epochs:
        log(f"  note: reusing the checkpoint at epoch {start} (> --epochs={cfg.epochs})")
      return Trained(model, state["params"], state["model_state"], data.x.shape[1:])
    log(f"  resuming {run_dir} from epoch {start}")

  step_fn = make_train_step(model, losses.make_loss(cfg.loss, attack), tx, cfg.augment)
  lr_at = optim.schedule(cfg.lr, cfg.milestones, steps)
  t_run = time.perf_counter()
  board = _tensorboard_writer(run_dir) if cfg.tensorboard else None
  for epoch in range(start, cfg.epochs):
    t0 = time.perf_counter()
    epoch_key = jax.random.fold_in(root, epoch)
    metrics = []
    for i, idx in enumerate(train_batches(len(data), cfg.batch_size, cfg.seed, epoch)):
      x, y = feed(data, idx)
      state, m = step_fn(state, x, y, jax.random.fold_in(epoch_key, i))
      metrics.append(m)
    loss, acc = (np.asarray(v) for v in sharding.to_host(tuple(zip(*metrics))))
    if not np.all(np.isfinite(loss)):
      bad = int(np.flatnonzero(~np.isfinite(loss))[0])
      raise TrainingDiverged(
          f"{cfg.loss} loss is not finite at epoch {epoch + 1}, step {bad + 1}; stopped. "
          f"The last good checkpoint (epoch {epoch}) is kept in {run_dir}.")
    checkpoint.save(mngr, epoch + 1, state)
    seconds = time.perf_counter() - t0
    record = {"epoch": epoch + 1, "loss": float(loss.mean()), "accuracy": float(acc.mean()),
              "lr": float(lr_at(epoch * steps)), "images_per_s": steps * cfg.batch_size / seconds,
              "seconds": seconds}
    _append_metrics(run_dir, record)
    if board is not None:
      for name in ("loss", "accuracy", "lr", "images_per_s"):
        board.add_scalar(f"train/{name}", record[name], epoch + 1)
      board.flush()
    left = (time.perf_counter() - t_run) / (epoch + 1 - start) * (cfg.epochs - epoch - 1)
    log(f"  epoch {epoch + 1:3d}/{cfg.epochs}  loss {record['loss']:.4f}  "
        f"acc {record['accuracy']:.3f}  lr {record['lr']:.2g}  "
        f"{record['images_per_s']:,.0f} img/s  {seconds:.1f}s  ~{left:.0f}s left")
  mngr.wait_until_finished()
  if board is not None:
    board.close()
  return Trained(model, state["params"], state["model_state"], data.x.shape[1:])
