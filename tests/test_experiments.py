"""End to end through the real entry points, in subprocesses, on the embedded digits."""
import json

import numpy as np
import pytest

from conftest import run_module


@pytest.mark.parametrize("args,msg", [
    (["--dataset=cifar10wo0"], "python -m ncg_jax.data.prepare cifar10 --data_dir="),
    (["--dataset=digitswo10"], "valid: 0..9"),
    (["--dataset=bogus"], "unknown dataset"),
    (["--model=resnet9000"], "valid: cnn002"),
    (["--dataset=npz:/no/such.npz"], "does not exist"),
    (["--losses=ce,hinge"], "unknown loss or run 'hinge'; losses: ce"),
])
def test_bad_input_exits_2_with_one_line(args, msg, data_dir, tmp_path):
  p = run_module("experiments.ncg", *args, f"--data_dir={data_dir}", f"--workdir={tmp_path}")
  assert p.returncode == 2, p.stderr
  err = [l for l in p.stderr.strip().splitlines() if l.strip()]
  assert len(err) == 1 and err[0].startswith("error:") and msg in err[0], p.stderr
  assert "Traceback" not in p.stderr


def test_ncg_end_to_end_and_reproducible(data_dir, tmp_path):
  args = ["--dataset=digitswo9", "--model=cnn002", "--epochs=2", "--losses=ce,trades6",
          "--attack_steps=2", f"--data_dir={data_dir}"]
  results = []
  for name in ("a", "b"):
    p = run_module("experiments.ncg", *args, f"--workdir={tmp_path / name}")
    assert p.returncode == 0, p.stderr[-3000:]
    for space in ("pixel", "feature"):
      assert f"| {space} | ce |" in p.stdout and f"| {space} | trades6 |" in p.stdout
    out = tmp_path / name / "digitswo9" / "cnn002" / "seed0"
    for f in ("results.json", "ncg_table.md", "ncg_vs_distance.png", "ncg_pixel_ce.npz",
              "ncg_feature_ce.npz", "ncg_pixel_trades6.npz", "ncg_feature_trades6.npz"):
      assert (out / f).exists(), f
    with open(out / "results.json") as f:
      results.append(json.load(f))
    npz = np.load(out / "ncg_pixel_ce.npz")  # no pickle needed (allow_pickle defaults False)
    assert {"train_x", "train_y", "ood_x", "ood_pred", "nn_index", "nn_dist"} <= set(npz.files)
    assert npz["train_x"].shape == (1294, 28, 28, 1) and npz["ood_x"].shape == (180, 28, 28, 1)
    # the stored figure is the one recomputed from the stored arrays
    ncg = np.mean(npz["ood_pred"] == npz["train_y"][npz["nn_index"]])
    assert abs(ncg - results[-1]["spaces"]["pixel"]["ce"]["ood"]["ncg"]) < 1e-12
  a, b = results
  assert a["flags"]["seed"] == 0 and a["versions"]["jax"]
  assert a["spaces"] == b["spaces"]  # same seed, same numbers


def test_train_entry_point_resumes_an_interrupted_run(data_dir, tmp_path):
  import shutil
  args = ["--dataset=digitswo9", "--loss=ce", "--epochs=2", f"--data_dir={data_dir}",
          f"--workdir={tmp_path}"]
  p = run_module("experiments.train", *args)
  assert p.returncode == 0, p.stderr[-3000:]
  acc = p.stdout.strip().splitlines()[-1]
  # simulate an interruption after epoch 1: drop the epoch-2 checkpoint, rerun the command
  shutil.rmtree(tmp_path / "digitswo9" / "cnn002" / "seed0" / "pixel" / "ce" / "checkpoints" / "2")
  p = run_module("experiments.train", *args)
  assert p.returncode == 0, p.stderr[-3000:]
  assert "resuming" in p.stdout and "epoch   2/2" in p.stdout and "epoch   1/2" not in p.stdout
  assert p.stdout.strip().splitlines()[-1] == acc  # same final model


def test_robustness_experiment_on_a_tiny_budget(data_dir, tmp_path):
  common = [f"--data_dir={data_dir}", f"--workdir={tmp_path}", "--epochs=2"]
  p = run_module("experiments.robustness", *common)
  assert p.returncode == 2 and "no trained pixel-space runs" in p.stderr
  for loss in ("ce", "advce"):
    p = run_module("experiments.train", *common, f"--loss={loss}", "--attack_steps=2")
    assert p.returncode == 0, p.stderr[-3000:]
  p = run_module("experiments.robustness", *common, "--n_samples=12",
                 "--cw_binary_search_steps=3", "--cw_max_iterations=50", "--cw_initial_const=1")
  assert p.returncode == 0, p.stderr[-3000:]
  out = tmp_path / "digitswo9" / "cnn002" / "seed0"
  for f in ("robustness.json", "robustness.md", "robustness_hist.png"):
    assert (out / f).exists(), f
  with open(out / "robustness.json") as f:
    res = json.load(f)
  assert set(res["runs"]) == {"ce", "advce-l2-eps2"}
  for run, r in res["runs"].items():
    assert 0 < r["attacked"] <= 12 and r["mean_ood_dist"] > 0
    assert all(x > 0 for x in res["radii"][run])
    assert 0.0 <= r["covered"] <= 1.0 or r["covered"] != r["covered"]  # a fraction, or NaN
