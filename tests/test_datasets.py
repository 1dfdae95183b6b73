"""Real-dataset plumbing without the data: user npz and image folders, built-in corruptions,
the ImgNet100 builder on a fake ImageNet, and the experiments end to end on TFDS mock data."""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ncg_jax import data
from ncg_jax.data import corruptions, imgnet100, images
from ncg_jax.registry import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_npz_dataset_follows_the_heldout_rules(digits9, data_dir, tmp_path):
  full = data.load("digits", data_dir)
  path = tmp_path / "mine.npz"
  np.savez(path, x=full.train.x, y=full.train.y, x_test=full.test.x, y_test=full.test.y,
           class_names=np.array(list("abcdefghij")))
  ds = data.load(f"npz:{path}:wo9")
  for a, b in ((ds.train, digits9.train), (ds.test, digits9.test), (ds.ood, digits9.ood)):
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
  assert ds.class_names == tuple("abcdefghi") and ds.base == "npz"
  name = data.dir_name(f"npz:{path}:wo9")
  assert "/" not in name and name.startswith("npz-mine-") and name.endswith("wo9")
  # without test arrays: a fixed per-class 80/20 split of x
  np.savez(tmp_path / "notest.npz", x=full.train.x, y=full.train.y)
  a, b = data.load(f"npz:{tmp_path / 'notest.npz'}"), data.load(f"npz:{tmp_path / 'notest.npz'}")
  np.testing.assert_array_equal(a.test.y, b.test.y)
  assert len(a.train) + len(a.test) == len(full.train)
  assert abs(len(a.test) / len(full.train) - 0.2) < 0.01


@pytest.mark.parametrize("arrays,msg", [
    ({"x": np.zeros((4, 2, 2, 1), np.float32), "y": np.zeros(4, int)}, "must be uint8"),
    ({"x": np.zeros((4, 2, 2, 1), np.uint8)}, "must hold arrays 'x' and 'y'"),
    ({"x": np.zeros((4, 2, 2, 1), np.uint8), "y": np.zeros(3, int)}, "matching 4 images"),
    ({"x": np.zeros((4, 2, 2, 1), np.uint8), "y": np.zeros(4, int),
      "x_test": np.zeros((2, 2, 2, 1), np.uint8)}, "both 'x_test' and 'y_test'"),
])
def test_npz_errors(arrays, msg, tmp_path):
  np.savez(tmp_path / "bad.npz", **arrays)
  with pytest.raises(ConfigError, match=msg):
    data.load(f"npz:{tmp_path / 'bad.npz'}")


def test_image_folder_dataset(digits9, tmp_path):
  from PIL import Image
  names = ["zero", "one", "two"]  # sorted: one, two, zero
  for split, src in (("train", digits9.train), ("test", digits9.test)):
    for c, cname in enumerate(names):
      os.makedirs(tmp_path / split / cname)
      for i in np.flatnonzero(src.y == c)[:5]:
        Image.fromarray(src.x[i, ..., 0]).save(tmp_path / split / cname / f"{i:05d}.png")
  ds = data.load(f"folder:{tmp_path}:wo2")  # class 2 = 'zero' (sorted class directories)
  assert ds.class_names == ("one", "two") and ds.train.x.shape == (10, 28, 28, 1)
  want = digits9.train.x[np.flatnonzero(digits9.train.y == 1)[:5]]
  np.testing.assert_array_equal(ds.train.x[ds.train.y == 0], want)  # PNG is lossless
  np.testing.assert_array_equal(ds.ood.x[:5], digits9.train.x[np.flatnonzero(digits9.train.y == 0)[:5]])
  Image.fromarray(np.zeros((30, 28), np.uint8)).save(tmp_path / "train" / "one" / "odd.png")
  with pytest.raises(ConfigError, match="differ in size"):
    data.load(f"folder:{tmp_path}")


def _severity_distance(x, name):
  return [np.abs(corruptions.corrupt(x, name, s).astype(float) - x).mean() for s in range(1, 6)]


@pytest.mark.parametrize("name", list(corruptions.BUILTIN))
def test_builtin_corruptions_grow_with_severity_and_are_seeded(name, digits9):
  for x in (digits9.test.x[:40], np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), np.uint8)):
    out = corruptions.corrupt(x, name, 3, seed=1)
    assert out.dtype == np.uint8 and out.shape == x.shape
    np.testing.assert_array_equal(out, corruptions.corrupt(x, name, 3, seed=1))
    d = _severity_distance(x, name)
    assert d[0] > 0 and d[-1] > d[0] and np.all(np.diff(d) > -0.02 * d[-1]), d


def test_corruption_closed_forms(digits9):
  x = digits9.test.x[:10]
  f = x.astype(np.float64) / 255
  # contrast: (x - per-image mean) * c + mean, c = 0.4 at severity 3
  m = f.mean(axis=(1, 2, 3), keepdims=True)
  want = np.clip(np.rint(((f - m) * 0.4 + m) * 255), 0, 255)
  np.testing.assert_array_equal(corruptions.corrupt(x, "contrast", 3), want)
  # brightness on grayscale: + 0.3 at severity 5
  np.testing.assert_array_equal(corruptions.corrupt(x, "brightness", 5),
                                np.clip(np.rint((f + 0.3) * 255), 0, 255))
  # shot noise is unbiased: Poisson(x c) / c has mean x
  big = np.full((200, 28, 28, 1), 100, np.uint8)
  assert abs(corruptions.corrupt(big, "shot_noise", 5).mean() - 100) < 0.5
  # impulse noise replaces about a fraction c of the values (0.07 at severity 5) by 0 or 255
  mid = np.full((100, 28, 28, 1), 128, np.uint8)
  hit = corruptions.corrupt(mid, "impulse_noise", 5) != 128
  assert abs(hit.mean() - 0.07) < 0.005
  with pytest.raises(ConfigError, match="severity"):
    corruptions.corrupt(x, "contrast", 6)


def test_digits_c_family(digits9):
  cells = corruptions.cells(digits9, corruptions=["contrast", "pixelate"])
  assert [(c.corruption, c.severity) for c in cells] == [
      (c, s) for c in ("contrast", "pixelate") for s in range(1, 6)]
  x, y = cells[0].load()
  np.testing.assert_array_equal(y, digits9.test.y)  # training labels, held-out class absent
  assert x.shape == digits9.test.x.shape
  with pytest.raises(ConfigError, match="unknown corruption"):
    corruptions.cells(digits9, corruptions=["frost"])
  assert corruptions.base_name("cifar10wo0-c") == "cifar10wo0"


def test_imgnet100_classes_and_builder_on_fake_imagenet():
  w = imgnet100.WNIDS
  assert len(w) == 100 == len(set(w)) and list(w) == sorted(w)
  assert w[:3] == ("n01558993", "n01692333", "n01729322")  # the paper's wo0, wo1, wo2
  # a fake imagenet2012: 5 records with JPEG bytes, two of them outside the subset
  from PIL import Image
  names = ["n00000001", w[0], "n00000002", w[1], w[99]]
  rng = np.random.default_rng(0)
  records = []
  for i, (hw, lab) in enumerate(zip([(150, 200), (300, 120), (64, 64), (112, 500), (128, 128)],
                                     range(5))):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*hw, 3), np.uint8)).save(buf, "JPEG")
    records.append({"image": buf.getvalue(), "label": lab})

  class Source(list):
    pass
  out = list(imgnet100.Imgnet100._generate_examples(None, Source(records),
                                                    imgnet100.imagenet_labels(names)))
  assert [(k, ex["label"]) for k, ex in out] == [(1, 0), (3, 1), (4, 99)]
  for (_, ex), rec in zip(out, [records[1], records[3], records[4]]):
    assert ex["image"].shape == (112, 112, 3) and ex["image"].dtype == np.uint8
    np.testing.assert_array_equal(ex["image"], images.resize_crop(images.decode(rec["image"]), 128, 112))


def test_resize_crop_geometry():
  # a 100 x 200 (h x w) image whose columns are numbered: shorter side -> 128 gives 128 x 256,
  # the centre 112 columns of that are columns 72..183, i.e. source columns ~56..143
  img = np.tile(np.arange(200, dtype=np.uint8)[None, :, None], (100, 1, 3))
  out = images.resize_crop(img, 128, 112)
  assert out.shape == (112, 112, 3)
  assert abs(int(out[56, 0, 0]) - 56) <= 1 and abs(int(out[56, -1, 0]) - 143) <= 1
  gray = images.resize_crop(img, 32, 32, channels=1)
  assert gray.shape == (32, 32, 1)


# ------------------------------------------------------------- experiments on TFDS mock data
def _mocked(n, module, *args):
  from conftest import subprocess_env
  env = subprocess_env()
  return subprocess.run([sys.executable, os.path.join(ROOT, "tests", "mocked_tfds_run.py"), str(n),
                         module, *args], capture_output=True, text=True, timeout=900, cwd=ROOT,
                        env=env)


TINY = ["--model=wrn_10_1", "--epochs=1", "--batch_size=16", "--losses=ce,trades6",
        "--attack_steps=2", "--feature_epochs=1", "--feature_batch_size=16"]


@pytest.mark.slow
def test_cifar10wo0_ncg_and_detect_on_mock_data(tmp_path):
  p = _mocked(80, "experiments.ncg", "--dataset=cifar10wo0", *TINY, "--robust_n=0",
              f"--workdir={tmp_path}")
  assert p.returncode == 0, p.stderr[-3000:]
  out = tmp_path / "cifar10wo0" / "wrn_10_1" / "seed0"
  res = json.loads((out / "results.json").read_text())
  d = res["dataset"]
  assert d["num_classes"] == 9 and d["train"] + d["ood"] + d["test"] == 160
  assert set(res["spaces"]["pixel"]) == set(res["spaces"]["feature"]) == {"ce", "trades6-l2-eps2"}
  p = _mocked(80, "experiments.detect", "--dataset=cifar10wo0", "--model=wrn_10_1",
              "--detectors=msp,energy,knn", "--max_ood=30", f"--workdir={tmp_path}")
  assert p.returncode == 0, p.stderr[-3000:]
  det = json.loads((out / "detect.json").read_text())
  assert det["groups"]["near"] == ["cifar100", "tin"]
  assert det["groups"]["far"] == ["mnist", "svhn", "textures", "places365"]
  for name in ("cifar100", "tin", "mnist", "svhn", "textures", "places365"):
    assert det["splits"][name] == 30  # capped sample, resized to 32x32x3 (MNIST, DTD, Places)
  runs = det["group_means"]["auroc"]
  assert set(runs) == {"ce", "trades6-l2-eps2"}
  near = np.mean([r["value"] for r in det["rows"] if (r["run"], r["detector"], r["metric"])
                  == ("ce", "knn", "auroc") and r["ood_set"] in ("cifar100", "tin")])
  assert abs(runs["ce"]["knn"]["near"] - near) < 1e-12
  assert "near (mean)" in (out / "detect_summary.md").read_text()


@pytest.mark.slow
def test_mnistwo9_ncg_on_mock_data(tmp_path):
  p = _mocked(64, "experiments.ncg", "--dataset=mnistwo9", "--model=cnn002", "--epochs=1",
              "--batch_size=16", "--losses=ce", "--feature_epochs=1", "--feature_batch_size=16",
              "--robust_n=0", f"--workdir={tmp_path}")
  assert p.returncode == 0, p.stderr[-3000:]
  res = json.loads((tmp_path / "mnistwo9" / "cnn002" / "seed0" / "results.json").read_text())
  assert res["dataset"]["held_out"] == 9 and res["dataset"]["num_classes"] == 9


@pytest.mark.slow
def test_cifar10_c_corrupted_on_mock_data(tmp_path):
  p = _mocked(48, "experiments.corrupted", "--dataset=cifar10-c", *TINY,
              "--corruptions=gaussian_noise,frost", f"--workdir={tmp_path}")
  assert p.returncode == 0, p.stderr[-3000:]
  out = tmp_path / "cifar10" / "wrn_10_1" / "seed0"  # models on all classes of cifar10
  res = json.loads((out / "corrupted.json").read_text())
  for space in ("pixel", "feature"):
    cells = res["cells"][space]
    assert len(cells) == 2 * 5 * 2  # corruptions x severities x losses
    s = res["summary"][space]
    assert np.isclose(s["ce"]["ncg_mean"], np.mean([c["ncg"] for c in cells if c["loss"] == "ce"]))
    diffs = [r["ncg"] - c["ncg"] for r, c in zip([c for c in cells if c["loss"] == "trades6-l2-eps2"],
                                                 [c for c in cells if c["loss"] == "ce"])]
    assert np.isclose(s["trades6-l2-eps2"]["vs_natural"]["diff_mean"], np.mean(diffs))
  assert (out / "corrupted.md").exists() and (out / "corrupted_ncg_vs_severity.png").exists()


def test_bad_npz_files_are_one_line_exit_2(tmp_path):
  """Files that are not npz archives, or hold object arrays, end in one line and exit 2."""
  from conftest import run_module
  np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object), y=np.zeros(1, int))
  (tmp_path / "text.npz").write_text("hello")
  np.save(tmp_path / "bare.npy", np.zeros(3))
  os.rename(tmp_path / "bare.npy", tmp_path / "bare.npz")
  for name, msg in (("obj", "holds object arrays, which need pickle"),
                    ("text", "is not an npz archive"), ("bare", "holds one bare array")):
    with pytest.raises(ConfigError, match=msg):
      data.load(f"npz:{tmp_path / name}.npz")
  p = run_module("experiments.ncg", f"--dataset=npz:{tmp_path / 'obj'}.npz", f"--workdir={tmp_path}")
  err = [l for l in p.stderr.splitlines() if l.strip()]
  assert p.returncode == 2 and len(err) == 1 and "object arrays" in err[0] and "Traceback" not in p.stderr
