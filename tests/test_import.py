"""Imported checkpoints against PyTorch itself: a twin with each source's exact keys and random
weights and normalisation statistics is saved in that source's file format, imported, and
its logits and features must agree with PyTorch's on random images."""
import json
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")  # in the test extras; skipped only outside them

from ncg_jax import models  # noqa: E402
from ncg_jax.models import logits_and_features  # noqa: E402
from ncg_jax.models.pretrained import import_weights, read_checkpoint  # noqa: E402
from ncg_jax.registry import ConfigError  # noqa: E402
from tests import torch_twins as tw  # noqa: E402
from tests.conftest import run_module  # noqa: E402

SMALL = {"width": 16, "stages": (1, 1, 1, 1)}

# name: (source, arch, twin factory, architecture fields, input size, channels)
CASES = {
    "torchvision-resnet18_224": ("torchvision", "resnet18_224",
                                 lambda: tw.TvResNet(tw.TvBasic, (1, 1, 1, 1), 7, 16), SMALL, 64, 3),
    "torchvision-vit_b_16": ("torchvision", "vit_b_16", lambda: tw.ViT(32, 8, 32, 2, 4, 64, 5),
                             {"patch": 8, "hidden": 32, "depth": 2, "heads": 4, "mlp": 64}, 32, 3),
    "openood-resnet18": ("openood", "resnet18", lambda: tw.CifarResNet((1, 1, 1, 1), 10, 16), SMALL, 32, 3),
    "openood-resnet18-cifar100": ("openood", "resnet18", lambda: tw.CifarResNet(
        (1, 1, 1, 1), 100, 16, stats=((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))), SMALL, 32, 3),
    "openood-resnet18_224": ("openood", "resnet18_224",
                             lambda: tw.TvResNet(tw.TvBasic, (1, 1, 1, 1), 200, 16), SMALL, 64, 3),
    "odin-densenet": ("odin", "densenet_bc_40_12", lambda: tw.DenseNet3(40, 12, 10), {}, 32, 3),
    "odin-wrn": ("odin", "wrn_10_2", lambda: tw.WideResNet(10, 2, 10, stats=tw.ODIN), {}, 32, 3),
    "bit-torch": ("bit", "bit_s_r50x1", lambda: tw.ResNetV2((1, 1, 1, 1), 32, 6),
                  {"units": (1, 1, 1, 1), "width": 32}, 64, 3),
    "bit-npz": ("bit", "bit_m_r50x1", lambda: tw.ResNetV2((1, 2, 1, 1), 32, 6),
                {"units": (1, 2, 1, 1), "width": 32}, 64, 3),
    "robustness": ("robustness", "resnet50_cifar", lambda: tw.RobustnessModel(
        tw.CifarResNet((1, 1, 1, 1), 10, 16, bottleneck=True, head="linear", stats=None),
        (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)), SMALL, 32, 3),
    "lolip-cnn002": ("lolip", "cnn002", lambda: tw.CNN002(9), {}, 28, 1),
    "lolip-wrn": ("lolip", "wrn_10_2", lambda: tw.WideResNet(10, 2, 9), {}, 32, 3),
    "lolip-resnet50": ("lolip", "resnet50", lambda: tw.TvResNet(tw.TvBottleneck, (1, 1, 1, 1), 99, 16),
                       SMALL, 112, 3),
}


def _save(twin, name: str, path: str) -> str:
  sd = twin.state_dict()
  if name == "bit-npz":
    path += ".npz"
    np.savez(path, **tw.bit_npz(twin))
  elif name == "bit-torch":  # GradNorm's checkpoint: a DataParallel state dict
    path += ".pth"
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}}, path)
  elif name == "robustness":  # {'model': DataParallel state dict, 'optimizer': ..., 'epoch': ...}
    path += ".pt"
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 150,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}}, path)
  elif name == "openood-resnet18":
    path += ".safetensors"
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in sd.items()}, path)
  else:
    path += ".pth"
    torch.save(sd, path)
  return path


def _agree(twin, trained, size, channels, n=3, seed=0):
  x = np.random.default_rng(seed).random((n, size, size, channels), dtype=np.float32)
  with torch.no_grad():
    out = twin(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
  logits_t, feats_t = (o.numpy() for o in out) if isinstance(out, tuple) else (out.numpy(), None)
  logits, feats = logits_and_features(trained, x)  # what ncg_jax runs (one program, not op by op)
  np.testing.assert_allclose(np.asarray(logits), logits_t, rtol=0, atol=1e-4)
  if feats_t is not None:
    np.testing.assert_allclose(np.asarray(feats), feats_t, rtol=0, atol=1e-4)
  return logits_t


@pytest.fixture(autouse=True)
def highest_precision():
  jax.config.update("jax_default_matmul_precision", "highest")
  yield
  jax.config.update("jax_default_matmul_precision", None)


@pytest.mark.parametrize("name", list(CASES))
def test_imported_checkpoint_matches_pytorch(name, tmp_path):
  source, arch, factory, fields, size, channels = CASES[name]
  torch.manual_seed(0)
  twin = tw.randomize(factory())
  path = _save(twin, name, str(tmp_path / name))
  trained = import_weights(arch, path, source=source, fields=fields, input_size=size)
  assert trained.input_shape == (size, size, channels)
  if name == "robustness":  # the twin's forward wraps the model
    forward = lambda x: twin.model(twin.normalizer(x))
    _agree(forward, trained, size, channels)
  else:
    _agree(twin, trained, size, channels)


def test_wrong_class_count_names_the_first_mismatching_key(tmp_path):
  twin = tw.randomize(tw.CifarResNet((1, 1, 1, 1), 10, 16))
  path = str(tmp_path / "r18.pth")
  torch.save(twin.state_dict(), path)
  with pytest.raises(ConfigError, match=r"first mismatching key fc\.bias: checkpoint \(10,\) vs model \(100,\) \(\+1 more\)"):
    import_weights("resnet18", path, source="openood", num_classes=100, fields=SMALL)
  sd = twin.state_dict()
  sd["extra.weight"] = torch.zeros(3)
  del sd["layer1.0.conv1.weight"]
  torch.save(sd, path)
  with pytest.raises(ConfigError, match=r"1 missing keys: layer1\.0\.conv1\.weight; 1 unexpected keys: extra\.weight"):
    import_weights("resnet18", path, source="openood", fields=SMALL)


def test_pickled_module_is_refused_with_the_state_dict_snippet(tmp_path):
  path = str(tmp_path / "densenet10.pth")
  torch.save(tw.DenseNet3(10, 4, 10), path)  # ODIN ships whole pickled modules
  with pytest.raises(ConfigError, match=r"pickled Python objects.*torch\.save\(torch\.load\('.*densenet10\.pth', "
                                        r"weights_only=False\)\.state_dict\(\), 'densenet10_state_dict\.pth'\)"):
    read_checkpoint(path)


def test_inputs_of_another_size_are_a_clear_error(tmp_path):
  twin = tw.randomize(tw.CNN002(9))
  path = str(tmp_path / "cnn.pth")
  torch.save(twin.state_dict(), path)
  trained = import_weights("cnn002", path, source="lolip")
  with pytest.raises(models.trained.InputShapeError, match="takes inputs of shape 28x28x1, got 32x32x1"):
    models.logits_and_features(trained, np.zeros((2, 32, 32, 1), np.uint8))


def test_command_imports_torchvision_resnet50_with_pytorch_logits(tmp_path):
  """The acceptance case: a full-size torchvision ResNet-50 with random weights, saved with
  torch.save(model.state_dict()), imported by the command, gives PyTorch's logits."""
  torch.manual_seed(0)
  twin = tw.randomize(tw.TvResNet(tw.TvBottleneck, (3, 4, 6, 3), 1000), head_scale=0.1)
  path = str(tmp_path / "resnet50.pth")
  torch.save(twin.state_dict(), path)
  workdir = str(tmp_path / "wd")
  proc = run_module("ncg_jax.models.import_weights", "--arch=resnet50", "--source=torchvision",
                    f"--checkpoint={path}", "--dataset=imagenet", f"--workdir={workdir}",
                    "--name=tv-r50")
  assert proc.returncode == 0, proc.stderr
  run = os.path.join(workdir, "imagenet", "resnet50", "seed0", "pixel", "tv-r50")
  with open(os.path.join(run, "config.json")) as f:
    record = json.load(f)
  assert record["imported"] and record["source"] == "torchvision" and record["num_classes"] == 1000
  assert record["input_shape"] == [224, 224, 3] and len(record["sha256"]) == 64
  from ncg_jax import runs
  trained = runs.load_imported(record, run)
  _agree(twin, trained, 224, 3, n=2)


def test_command_errors_are_one_line_exit_2(tmp_path):
  twin = tw.randomize(tw.CNN002(10))
  path = str(tmp_path / "cnn.pth")
  torch.save(twin.state_dict(), path)
  proc = run_module("ncg_jax.models.import_weights", "--arch=cnn002", "--source=lolip",
                    f"--checkpoint={path}", "--dataset=digitswo9", f"--workdir={tmp_path}")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "error: the checkpoint's head has 10 classes; --dataset=digitswo9 has 9"]
  proc = run_module("ncg_jax.models.import_weights", "--arch=cnn002", "--source=torchvision",
                    f"--checkpoint={path}", "--dataset=digits", f"--workdir={tmp_path}")
  assert proc.returncode == 2 and "source 'torchvision' has no layout for --arch=cnn002" in proc.stderr


@pytest.mark.slow
def test_experiments_use_imported_runs_by_name(data_dir, tmp_path):
  """An imported classifier is scored by experiments.ncg and .corrupted like a trained one:
  its predictions are the PyTorch twin's, and feature space is its own penultimate layer."""
  from ncg_jax import data, runs
  wd = str(tmp_path / "wd")
  twins = {}
  for dataset, k in (("digitswo9", 9), ("digits", 10)):
    twins[dataset] = twin = tw.randomize(tw.CNN002(k), seed=k)
    path = str(tmp_path / f"cnn{k}.pth")
    torch.save(twin.state_dict(), path)
    p = run_module("ncg_jax.models.import_weights", "--arch=cnn002", "--source=lolip",
                   f"--checkpoint={path}", f"--dataset={dataset}", f"--workdir={wd}",
                   "--name=lolip-cnn")
    assert p.returncode == 0, p.stderr[-2000:]
  common = ["--model=cnn002", "--losses=lolip-cnn", "--feature_network=lolip-cnn",
            "--feature_epochs=1", f"--data_dir={data_dir}", f"--workdir={wd}"]
  p = run_module("experiments.ncg", "--dataset=digitswo9", "--robust_n=0", *common)
  assert p.returncode == 0, p.stderr[-3000:]
  out = tmp_path / "wd" / "digitswo9" / "cnn002" / "seed0"
  with open(out / "results.json") as f:
    res = json.load(f)
  assert set(res["spaces"]["pixel"]) == {"lolip-cnn"} and set(res["spaces"]["feature"]) == {"ce"}
  assert res["feature_network"] == "lolip-cnn"
  assert (out / "feature-lolip-cnn" / "ce" / "config.json").exists()  # heads on its features
  npz = np.load(out / "ncg_pixel_lolip-cnn.npz")
  with torch.no_grad():
    torch_pred = twins["digitswo9"](torch.from_numpy(
        npz["ood_x"].transpose(0, 3, 1, 2).astype(np.float32) / 255.0))[0].argmax(1).numpy()
  np.testing.assert_array_equal(npz["ood_pred"], torch_pred)
  assert res["spaces"]["pixel"]["lolip-cnn"]["ood"]["ncg"] == pytest.approx(
      np.mean(torch_pred == npz["train_y"][npz["nn_index"]]))
  ds = data.load("digitswo9", data_dir)
  found = runs.find(wd, "digitswo9", "cnn002", 0, "pixel")  # what detect and robustness see
  assert found["lolip-cnn"]["imported"]
  trained = runs.load(found["lolip-cnn"], workdir=wd, dataset="digitswo9", model_name="cnn002",
                      data=ds.train, num_classes=9)
  assert trained.input_shape == (28, 28, 1)

  p = run_module("experiments.corrupted", "--dataset=digits", "--corruptions=contrast",
                 "--space=pixel", *common)
  assert p.returncode == 0, p.stderr[-3000:]
  with open(tmp_path / "wd" / "digits" / "cnn002" / "seed0" / "corrupted.json") as f:
    cor = json.load(f)
  assert set(cor["summary"]["pixel"]) == {"lolip-cnn"} and cor["summary"]["pixel"]["lolip-cnn"]["cells"] == 5

  p = run_module("experiments.ncg", "--dataset=digitswo9", *common, "--losses=lolip-cnn,nope")
  assert p.returncode == 2 and "imported runs for digitswo9/cnn002/seed0" in p.stderr
  assert "lolip-cnn" in p.stderr.strip().splitlines()[-1]


def test_importing_again_is_idempotent_and_another_file_under_one_name_an_error(tmp_path):
  args = ["--arch=cnn002", "--source=lolip", "--dataset=digitswo9", f"--workdir={tmp_path}",
          "--name=mine"]
  for seed in (0, 0, 1):
    path = str(tmp_path / f"cnn{seed}.pth")
    torch.save(tw.randomize(tw.CNN002(9), seed=seed).state_dict(), path)
    p = run_module("ncg_jax.models.import_weights", f"--checkpoint={path}", *args)
    if seed == 0:
      assert p.returncode == 0, p.stderr[-2000:]
  assert p.returncode == 2 and "already holds another run" in p.stderr
