import dataclasses
import os

import jax
import numpy as np
import pytest

from ncg_jax import batching, data, models
from ncg_jax.train import checkpoint
from ncg_jax.train.trainer import TrainConfig, TrainingDiverged, make_train_step, train

CFG = TrainConfig(batch_size=64, epochs=2, milestones=(1,), lr=0.05)


def small(digits9, n=256):
  return data.Split(digits9.train.x[:n], digits9.train.y[:n])


def leaves(trained):
  return [np.asarray(x) for x in jax.tree.leaves(trained.params)]


def _scalars(log_dir) -> dict:
  """{tag: [(step, value)]} from the TensorBoard event files in `log_dir`, read as the
  TFRecord framing (8-byte length, 4-byte CRC, Event proto, 4-byte CRC) by hand."""
  import struct
  from tensorboardX.proto import event_pb2
  out = {}
  for path in sorted(log_dir.iterdir()):
    raw = path.read_bytes()
    pos = 0
    while pos < len(raw):
      (n,) = struct.unpack("<Q", raw[pos:pos + 8])
      event = event_pb2.Event.FromString(raw[pos + 12:pos + 12 + n])
      pos += 12 + n + 4
      for v in event.summary.value:
        out.setdefault(v.tag, []).append((event.step, v.simple_value))
  return out


def test_resume_equals_uninterrupted_run(digits9, tmp_path):
  split = small(digits9)
  model = models.create("cnn002", 9)
  board = dataclasses.replace(CFG, tensorboard=True)
  full = train(model, split, board, str(tmp_path / "full"), log=lambda s: None)
  train(model, split, dataclasses.replace(CFG, epochs=1), str(tmp_path / "resumed"),
        log=lambda s: None)
  msgs = []  # switching TensorBoard on for the rest of a run is allowed
  resumed = train(model, split, board, str(tmp_path / "resumed"), log=msgs.append)
  assert any("resuming" in m for m in msgs)
  assert any("img/s" in m and "left" in m for m in msgs)  # progress a person can follow
  import json
  lines = [json.loads(l) for l in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in lines] == [1, 2] and lines[0]["lr"] == pytest.approx(CFG.lr)
  assert lines[1]["lr"] == pytest.approx(CFG.lr * 0.1)  # the x0.1 milestone at epoch 1
  assert all(r["images_per_s"] > 0 and np.isfinite(r["loss"]) for r in lines)
  assert (tmp_path / "resumed" / "metrics.jsonl").read_text().count("\n") == 2
  events = _scalars(tmp_path / "full" / "tensorboard")
  assert [step for step, _ in events["train/loss"]] == [1, 2]
  np.testing.assert_allclose([v for _, v in events["train/loss"]], [r["loss"] for r in lines], rtol=1e-6)
  assert [step for step, _ in _scalars(tmp_path / "resumed" / "tensorboard")["train/lr"]] == [2]
  for a, b in zip(leaves(full), leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  # training moved the parameters (the test above is not vacuous)
  fresh, _ = models.init(model, jax.random.key(0), np.zeros((1, 28, 28, 1), np.float32))
  assert not np.allclose(np.asarray(fresh["fc1"]["kernel"]), np.asarray(full.params["fc1"]["kernel"]))


def test_train_step_compiles_once(digits9):
  import optax
  from ncg_jax.train import losses
  model = models.create("cnn002", 9)
  params, state = models.init(model, jax.random.key(0), np.zeros((1, 28, 28, 1), np.float32))
  traces = []
  ce = losses.make_loss("ce")

  def counting_loss(*args):
    traces.append(1)
    return ce(*args)

  tx = optax.sgd(0.01)
  step = make_train_step(model, counting_loss, tx)
  s = {"params": params, "model_state": state, "opt": tx.init(params)}
  for epoch in range(2):
    for i, idx in enumerate(batching.train_batches(256, 32, 0, epoch)):
      s, _ = step(s, digits9.train.x[idx], digits9.train.y[idx], jax.random.key(i))
  assert len(traces) == 1


def test_runs_of_one_architecture_and_loss_compile_their_gradient_once(digits9, tmp_path):
  """Two runs of one architecture and loss (another seed, another data size, so another
  learning-rate schedule; as in a held-out-class sweep) share one compiled gradient program,
  and equal optimizer settings share the whole step."""
  from ncg_jax.train import losses, optim, trainer
  cfg = dataclasses.replace(CFG, epochs=1)
  train(models.create("cnn002", 9), small(digits9, 192), cfg, str(tmp_path / "a"),
        log=lambda s: None)
  gradient = trainer._cached_gradient(models.create("cnn002", 9), losses.make_loss("ce"), False)
  compiled = gradient._cache_size()  # other tests in this process may have added shapes
  assert compiled >= 1
  train(models.create("cnn002", 9), small(digits9, 320), dataclasses.replace(cfg, seed=1),
        str(tmp_path / "b"), log=lambda s: None)
  assert gradient._cache_size() == compiled  # the second run compiled no gradient of its own
  tx = lambda steps: optim.make_optimizer("sgd", 0.05, 0.9, [1], steps)
  assert tx(3) is tx(3) and tx(3) is not tx(5)
  step = lambda steps: make_train_step(models.create("cnn002", 9), losses.make_loss("ce"), tx(steps))
  assert step(3) is step(3) and step(3) is not step(5)


def test_train_step_as_two_programs_gives_the_bits_of_one(digits9):
  """The CPU's default step (gradient, then the optimizer's update, as two programs) and the
  one-program step of accelerators give bitwise the same states and metrics, with momentum
  and dropout, for TRADES (its attack and train-mode passes inside the gradient program; CE
  and PGD-AT were bitwise too in a `/tmp` probe, `benchmarks/RESULTS.md`)."""
  import optax
  from ncg_jax.train import losses
  model = models.create("cnn002", 9)
  params, state = models.init(model, jax.random.key(0), np.zeros((1, 28, 28, 1), np.float32))
  tx = optax.sgd(0.05, momentum=0.9)
  loss_fn = losses.make_loss("trades6", losses.AttackConfig(steps=2))
  runs = []
  for separate in (True, False):
    step = make_train_step(model, loss_fn, tx, separate_update=separate)
    s = {"params": jax.tree.map(np.array, params), "model_state": state, "opt": tx.init(params)}
    metrics = []
    for i, idx in enumerate(batching.train_batches(128, 32, 0, 0)):
      s, m = step(s, digits9.train.x[idx], digits9.train.y[idx], jax.random.key(i))
      metrics.append(m)
    runs.append((s, metrics))
  (two, two_metrics), (one, one_metrics) = runs
  assert not np.allclose(np.asarray(two["params"]["fc1"]["kernel"]), params["fc1"]["kernel"])
  for a, b in zip(jax.tree.leaves((two, two_metrics)), jax.tree.leaves((one, one_metrics))):
    np.testing.assert_array_equal(np.atleast_1d(a).view(np.uint8), np.atleast_1d(b).view(np.uint8))


def test_nan_stops_training_and_keeps_last_good_checkpoint(digits9, tmp_path):
  split = data.Split(np.random.default_rng(0).normal(size=(256, 20)).astype(np.float32),
                     digits9.train.y[:256])
  model = models.create("mlp", 9)
  run = str(tmp_path / "run")
  good = train(model, split, dataclasses.replace(CFG, epochs=1), run, log=lambda s: None)
  bad = data.Split(np.full_like(split.x, np.nan), split.y)
  with pytest.raises(TrainingDiverged, match="epoch 2"):
    train(model, bad, CFG, run, log=lambda s: None)
  mngr = checkpoint.manager(os.path.join(run, "checkpoints"))
  assert mngr.latest_step() == 1
  reloaded = train(model, split, dataclasses.replace(CFG, epochs=1), run, log=lambda s: None)
  for a, b in zip(leaves(good), leaves(reloaded)):
    np.testing.assert_array_equal(a, b)


def test_unreadable_checkpoint_is_an_error_not_a_retrain(digits9, tmp_path):
  split = data.Split(np.random.default_rng(0).normal(size=(128, 20)).astype(np.float32),
                     digits9.train.y[:128])
  model = models.create("mlp", 9)
  run = tmp_path / "run"
  train(model, split, dataclasses.replace(CFG, epochs=1), str(run), log=lambda s: None)
  for root, _, files in os.walk(run / "checkpoints" / "1"):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"garbage")
  with pytest.raises(checkpoint.CheckpointError, match="cannot read checkpoint"):
    train(model, split, CFG, str(run), log=lambda s: None)


def test_a_run_with_other_settings_is_an_error_but_other_metadata_is_not(digits9, tmp_path):
  from ncg_jax import runs
  from ncg_jax.registry import ConfigError
  from ncg_jax.train.trainer import settings
  split = data.Split(np.random.default_rng(0).normal(size=(128, 20)).astype(np.float32),
                     digits9.train.y[:128])
  model = models.create("mlp", 9)
  run = str(tmp_path / "run")
  one = dataclasses.replace(CFG, epochs=1)
  runs.write_config(run, settings(model, split, one, arch="mlp"), meta={"note": "a"})
  train(model, split, one, run, log=lambda s: None)
  with pytest.raises(ConfigError, match="lr=0.05"):
    runs.write_config(run, settings(model, split, dataclasses.replace(one, lr=0.1), arch="mlp"))
  with pytest.raises(ConfigError, match="fields="):  # another width is another run
    runs.write_config(run, settings(models.create("mlp", 9, widths=(8, 8, 8)), split, one, arch="mlp"))
  # a rerun may extend the epochs, switch TensorBoard on and carry other metadata
  runs.write_config(run, settings(model, split, dataclasses.replace(one, epochs=2, tensorboard=True),
                                  arch="mlp"), meta={"note": "b"})
  msgs = []
  train(model, split, one, run, log=msgs.append)  # reuses the checkpoint, no retrain
  assert not any("epoch" in m for m in msgs)


def test_bfloat16_compute_keeps_float32_parameters_and_outputs(digits9, tmp_path):
  import jax.numpy as jnp
  from ncg_jax import runs
  from ncg_jax.models import logits_and_features
  split = small(digits9, 128)
  cfg = dataclasses.replace(CFG, epochs=1, precision="bfloat16")
  t = runs.train_or_load(workdir=str(tmp_path), dataset="digitswo9", model_name="cnn002",
                         space="pixel", loss="ce", data=split, num_classes=9, cfg=cfg,
                         log=lambda s: None)
  assert t.model.dtype == jnp.bfloat16
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(t.params))
  assert (tmp_path / "digitswo9" / "cnn002" / "seed0" / "pixel" / "ce-bfloat16").is_dir()
  logits, feats = logits_and_features(t, split.x)
  assert logits.dtype == np.float32 and np.all(np.isfinite(logits))
  # the same parameters in float32 give nearly the same logits (bfloat16 has 8 mantissa bits)
  f32 = models.create("cnn002", 9).apply({"params": t.params}, split.x[:32] / 255.0)[0]
  np.testing.assert_allclose(logits[:32], f32, atol=0.05 * float(np.abs(f32).max()) + 1e-3)


def test_load_restores_a_finished_run_and_names_the_command_for_an_unfinished_one(digits9, tmp_path):
  import json
  from ncg_jax import runs
  from ncg_jax.registry import ConfigError
  from ncg_jax.train.trainer import TrainConfig
  small = type(digits9.train)(digits9.train.x[:64], digits9.train.y[:64])
  cfg = TrainConfig(loss="ce", optimizer="sgd", lr=0.01, momentum=0.9, batch_size=32, epochs=1,
                    milestones=(), seed=0)
  trained = runs.train_or_load(workdir=str(tmp_path), dataset="digitswo9", model_name="cnn002",
                               space="pixel", loss="ce", data=small, num_classes=9, cfg=cfg,
                               log=lambda s: None)
  record = runs.find(str(tmp_path), "digitswo9", "cnn002", 0, "pixel")["ce"]
  loaded = runs.load(record, workdir=str(tmp_path), dataset="digitswo9", model_name="cnn002",
                     num_classes=9)
  for a, b in zip(jax.tree.leaves(trained.params), jax.tree.leaves(loaded.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # a run that stopped before its last epoch is not trained on by loading
  path = os.path.join(record["run_dir"], "config.json")
  with open(path) as f:
    on_disk = json.load(f)
  with open(path, "w") as f:
    json.dump({**on_disk, "epochs": 3}, f)
  record = runs.find(str(tmp_path), "digitswo9", "cnn002", 0, "pixel")["ce"]
  with pytest.raises(ConfigError, match="unfinished .epoch 1 of 3.*experiments.train"):
    runs.load(record, workdir=str(tmp_path), dataset="digitswo9", model_name="cnn002", num_classes=9)
  assert len(os.listdir(os.path.join(record["run_dir"], "checkpoints"))) == 1
