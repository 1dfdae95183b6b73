"""End to end through the real entry points, in subprocesses, on the embedded digits."""
import json
import os

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
    (["--precision=float64"], "flag --precision=float64: value should be one of <float32|bfloat16>"),
    (["--eps=2,x"], "--eps=2,x: expected comma-separated numbers"),
    (["--space=bogus"], "flag --space=bogus: value should be one of <pixel|feature|both>"),
    (["--robust_n=-1"], "--robust_n must be 0 (skip) or positive"),
])
def test_bad_input_exits_2_with_one_line(args, msg, data_dir, tmp_path):
  p = run_module("experiments.ncg", *args, f"--data_dir={data_dir}", f"--workdir={tmp_path}")
  assert p.returncode == 2, p.stderr
  err = [l for l in p.stderr.strip().splitlines() if l.strip()]
  assert len(err) == 1 and err[0].startswith("error:") and msg in err[0], p.stderr
  assert "Traceback" not in p.stderr


@pytest.mark.slow
def test_ncg_end_to_end_and_reproducible(data_dir, tmp_path):
  args = ["--dataset=digitswo9", "--model=cnn002", "--epochs=1", "--losses=ce,trades6",
          "--attack_steps=2", "--feature_epochs=1", f"--data_dir={data_dir}"]
  results = []
  for name, robust_n in (("a", 40), ("b", 0)):  # robust accuracy once: it is seeded too
    p = run_module("experiments.ncg", *args, f"--robust_n={robust_n}", f"--workdir={tmp_path / name}")
    assert p.returncode == 0, p.stderr[-3000:]
    for space in ("pixel", "feature"):
      assert f"| {space} | ce |" in p.stdout and f"| {space} | trades6-l2-eps2 |" in p.stdout
    out = tmp_path / name / "digitswo9" / "cnn002" / "seed0"
    for f in ("results.json", "ncg_table.md", "ncg_vs_distance.png", "ncg_pixel_ce.npz",
              "ncg_feature_ce.npz", "ncg_pixel_trades6-l2-eps2.npz", "ncg_feature_trades6-l2-eps2.npz"):
      assert (out / f).exists(), f
    with open(out / "results.json") as f:
      results.append(json.load(f))
    npz = np.load(out / "ncg_pixel_ce.npz")  # no pickle needed (allow_pickle defaults False)
    assert {"train_x", "train_y", "ood_x", "ood_pred", "nn_index", "nn_dist"} <= set(npz.files)
    assert npz["train_x"].shape == (1294, 28, 28, 1) and npz["ood_x"].shape == (180, 28, 28, 1)
    # the stored figure is the one recomputed from the stored arrays
    ncg = np.mean(npz["ood_pred"] == npz["train_y"][npz["nn_index"]])
    assert abs(ncg - results[-1]["spaces"]["pixel"]["ce"]["ood"]["ncg"]) < 1e-12
    assert str(np.load(out / "ncg_feature_ce.npz")["feature_layer"]) == "conv_features"
    assert np.load(out / "ncg_feature_ce.npz")["train_x"].shape == (1294, 1024)  # the paper's
    for space in ("pixel", "feature"):
      for run, r in results[-1]["spaces"][space].items():
        if name == "b":
          assert "robust" not in r
          continue
        rob = r["robust"]
        assert rob["eps"] == 2.0 and rob["n"] == 40 and 0 <= rob["any"] <= rob["clean"]
        assert rob["any"] <= min(rob["pgd"], rob["apgd_ce"], rob["apgd_dlr"])
        assert 0 <= r["uniform_noise"]["ncg"] <= 1 and r["train_accuracy"] > 0
  a, b = results
  machine = a["versions"]
  assert a["flags"]["seed"] == 0 and machine["jax"] and machine["jaxlib"]
  assert machine["host_cpu"]["cpus"] >= 1 and "conv_flag" in machine["ncg_jax_cpu_settings"]
  for by_run in a["spaces"].values():  # what only the robust evaluation adds
    for r in by_run.values():
      r.pop("robust")
      r["flags"] = [f for f in r["flags"] if f != "not robust"]
  assert a["spaces"] == b["spaces"]  # same seed, same numbers


@pytest.mark.slow
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


@pytest.mark.slow
def test_robustness_experiment_on_a_tiny_budget(data_dir, tmp_path):
  common = [f"--data_dir={data_dir}", f"--workdir={tmp_path}"]
  p = run_module("experiments.robustness", *common)
  assert p.returncode == 2 and "no trained pixel-space runs" in p.stderr
  p = run_module("experiments.robustness", *common, "--epochs=2", "--lr=0.1")  # trains nothing
  assert p.returncode == 2 and p.stderr.strip() == (
      "error: --epochs, --lr: not used by experiments.robustness (it attacks the trained pixel-space runs "
      "it finds in --workdir)")
  for loss in ("ce", "advce"):
    p = run_module("experiments.train", *common, "--epochs=2", f"--loss={loss}", "--attack_steps=2")
    assert p.returncode == 0, p.stderr[-3000:]
  p = run_module("experiments.robustness", *common, "--n_samples=12", "--cw_batch_size=8",
                 "--robust_n=30",
                 "--cw_binary_search_steps=3", "--cw_max_iterations=50", "--cw_initial_const=1")
  assert p.returncode == 0, p.stderr[-3000:]
  out = tmp_path / "digitswo9" / "cnn002" / "seed0"
  for f in ("robustness.json", "robustness.md", "robustness_hist.png"):
    assert (out / f).exists(), f
  with open(out / "robustness.json") as f:
    res = json.load(f)
  assert set(res["runs"]) == {"ce", "advce-l2-eps2"}
  assert "about" in p.stdout and "12/12 images" in p.stdout  # progress, two chunks of 8
  for run, r in res["runs"].items():
    assert 0 < r["attacked"] <= 12 and r["mean_ood_dist"] > 0
    assert r["mean_ood_dist_attacked"] > 0 and r["robust"]["n"] == 30
    assert r["robust"]["any"] <= r["robust"]["clean"]
    assert all(x > 0 for x in res["radii"][run])
    assert 0.0 <= r["covered"] <= 1.0 or r["covered"] != r["covered"]  # a fraction, or NaN


def test_a_run_that_did_not_learn_is_flagged_and_warned_about(digits9, capsys, monkeypatch):
  """An untrained CNN002 (zero head: one constant prediction) scores at chance: flagged in
  the results and warned about on stderr. A constant classifier is trivially robust (its
  robust accuracy is its clean accuracy); a robust run whose attacks break everything is
  flagged 'not robust'."""
  import jax
  import jax.numpy as jnp
  from experiments import common
  from experiments.ncg import Space, assess
  from ncg_jax import models
  from ncg_jax.train import losses
  model = models.create("cnn002", 9)
  params, state = models.init(model, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  trained = models.Trained(model, params, state, (28, 28, 1))
  attack = losses.AttackConfig(eps=2.0)
  spec = common.RunSpec("advce", attack)
  sp = Space("pixel", None, None, {spec.name: trained}, {spec.name: spec})
  out, _ = assess(sp, spec.name, digits9, None, attack, robust_n=60, seed=0, log=lambda s: None)
  assert out["flags"] == ["did not learn"]
  assert out["test_accuracy"] <= out["chance_accuracy"] + 1e-9
  assert out["robust"]["any"] == out["robust"]["clean"]
  assert "warning: pixel/advce-l2-eps2 did not learn" in capsys.readouterr().err
  monkeypatch.setattr(common, "robust_on_test", lambda *a, **k: {"clean": 0.9, "any": 0.01, "n": 60})
  out, _ = assess(sp, spec.name, digits9, None, attack, robust_n=60, seed=0, log=lambda s: None)
  assert out["flags"] == ["did not learn", "not robust"]
  assert "warning: pixel/advce-l2-eps2 not robust" in capsys.readouterr().err


@pytest.mark.slow
def test_held_out_sweep_summarises_classes_as_table_1(data_dir, tmp_path):
  p = run_module("experiments.ncg", "--dataset=digits", "--held_out=8,9", "--losses=ce",
                 "--epochs=2", "--space=pixel", "--robust_n=0", f"--data_dir={data_dir}",
                 f"--workdir={tmp_path}")
  assert p.returncode == 0, p.stderr[-3000:]
  with open(tmp_path / "digits" / "cnn002" / "seed0" / "ncg_sweep.json") as f:
    sweep = json.load(f)["summary"]["pixel"]["ce"]
  per = [json.loads((tmp_path / f"digitswo{k}" / "cnn002" / "seed0" / "results.json").read_text())
         ["spaces"]["pixel"]["ce"]["ood"]["ncg"] for k in (8, 9)]
  assert [sweep["per_class"][k]["ncg"] for k in ("8", "9")] == per
  assert np.isclose(sweep["ncg"]["mean"], np.mean(per))
  assert np.isclose(sweep["ncg"]["sem"], np.std(per, ddof=1) / np.sqrt(2))
  assert "| pixel | ce |" in p.stdout and "mean ± SEM" in p.stdout
  p = run_module("experiments.ncg", "--dataset=digitswo9", "--held_out=all",
                 f"--data_dir={data_dir}", f"--workdir={tmp_path}")
  assert p.returncode == 2 and "already holds a class out" in p.stderr


@pytest.mark.slow
def test_corrupted_compiles_nothing_after_its_first_cell(data_dir, tmp_path):
  """The number of compilations does not grow with the number of corruption cells: every
  cell after the first runs programs compiled for the first (10 cells, two corruptions)."""
  import subprocess
  import sys
  env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_LOG_COMPILES="1")
  p = subprocess.run([sys.executable, "-m", "experiments.corrupted", "--dataset=digits",
                      "--corruptions=contrast,pixelate", "--space=pixel", "--losses=ce",
                      "--epochs=1", f"--data_dir={data_dir}", f"--workdir={tmp_path}"],
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                     cwd=os.path.dirname(os.path.dirname(__file__)), timeout=600)
  assert p.returncode == 0, p.stdout[-3000:]
  lines = p.stdout.splitlines()
  first = next(i for i, l in enumerate(lines) if l.startswith("[1/10] contrast s1"))
  assert any("Compiling" in l for l in lines[:first])  # the log does show compilations
  assert [l for l in lines[first:] if "Compiling" in l] == []
  assert sum(l.startswith("[") and "/10] " in l for l in lines[first:]) == 10
