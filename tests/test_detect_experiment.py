"""experiments.detect beyond the held-out class: OpenOOD's benchmark read from a synthetic tree
in OpenOOD's layout, all-class ID with `--ood` image folders and npz files, ODIN's per-set
tuning, and the notebook API. Models are random (imported runs): these tests check what is
read, searched, scored and written, against sklearn on the saved scores."""
import csv
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from experiments import detect as detect_exp
from ncg_jax import detect, models, runs
from ncg_jax.data import images as images_lib, imagesets, openood
from ncg_jax.models import Trained


def save_random_run(workdir, dataset, arch, k, shape, name="random", **fields):
  model = models.create(arch, k, **fields)
  params, state = models.init(model, jax.random.key(0), jnp.zeros((1, *shape)))
  trained = Trained(model, params, state, tuple(shape))
  record = {"imported": True, "source": "test", "checkpoint": "none", "sha256": name, "arch": arch,
            "space": "pixel", "loss": None, "num_classes": k, "input_shape": list(shape),
            "fields": models.fields_of(model, arch), "name": name, "seed": 0, "dataset": dataset}
  runs.save_imported(trained, record, runs.run_dir(str(workdir), dataset, arch, 0, "pixel", name))
  return trained


def write_images(folder, n, size, mode, seed, start=0):
  rng = np.random.default_rng(seed)
  os.makedirs(folder, exist_ok=True)
  names = []
  for i in range(n):
    shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(
        os.path.join(folder, f"{start + i:05d}.png"))
    names.append(f"{start + i:05d}.png")
  return names


def openood_tree(root, counts):
  """benchmark_imglist/cifar10/*.txt and images_classic/<set>/ as OpenOOD's download fills
  them; OOD sets of other sizes and grey images, to be resized as OpenOOD's test transform."""
  bench = openood.BENCHMARKS["cifar10"]
  sizes = {"mnist": ((28, 28), "L"), "texture": ((45, 37), "RGB"), "places365": ((64, 64), "RGB")}
  for split, rel in bench.lists().items():
    folder = split.replace("id_", "cifar10_")
    size, mode = sizes.get(split, ((32, 32), "RGB"))
    names = write_images(os.path.join(root, "images_classic", folder), counts.get(split, 20), size,
                         mode, seed=len(split))
    labels = [i % 10 for i in range(len(names))] if split.startswith("id_") else [-1] * len(names)
    os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
    with open(os.path.join(root, rel), "w") as f:
      f.writelines(f"{folder}/{n} {y}\n" for n, y in zip(names, labels))


DETS = ("msp", "react", "knn", "nac", "gen")


def config(tmp_path, **kw):
  base = dict(dataset="cifar10", model="resnet18", workdir=str(tmp_path / "wd"), data_dir=None,
              seed=0, detectors=DETS, max_ood=0, fit_max=50000)
  return detect_exp.DetectConfig(**{**base, **kw})


@pytest.mark.slow
def test_openood_cifar10_benchmark_on_a_synthetic_tree(tmp_path):
  root = str(tmp_path / "openood")
  counts = {"id_train": 40, "id_val": 20, "id_test": 20, "ood_val": 20}  # two batch shapes
  openood_tree(root, counts)
  save_random_run(tmp_path / "wd", "cifar10", "resnet18", 10, (32, 32, 3), width=4)
  res = detect_exp.run(config(tmp_path, benchmark="openood:cifar10", openood_root=root),
                       log=lambda *a: None)
  assert res["groups"] == {"near": ["cifar100", "tin"],
                           "far": ["mnist", "svhn", "texture", "places365"],
                           "noise": ["uniform_noise", "gaussian_noise"]}
  assert res["splits"]["id_test"] == 20 and res["splits"]["ood_val"] == 20
  assert res["splits"]["mnist"] == 20 and res["splits"]["fit"] == 40
  # the NAC search ran over the reference's CIFAR-10 ResNet grid (256 points)
  assert len(res["search"]["random"]["nac"]) == 256
  assert "avgpool_O" in res["hyperparameters"]["random"]["nac"]
  out = tmp_path / "wd" / "cifar10" / "resnet18" / "seed0"
  scores = np.load(out / "detect_scores_random.npz", allow_pickle=False)
  assert scores["msp__id"].shape == (20,) and scores["msp__mnist"].shape == (20,)
  for det in ("msp", "nac", "knn"):
    ref = roc_auc_score(np.r_[np.ones(20), np.zeros(20)],
                        np.r_[scores[f"{det}__id"], scores[f"{det}__texture"]])
    row = [r for r in res["rows"] if (r["detector"], r["ood_set"], r["metric"]) == (det, "texture", "auroc")]
    assert abs(row[0]["value"] - ref) < 1e-9
  near = np.mean([r["value"] for r in res["rows"] if r["detector"] == "knn" and r["metric"] == "auroc"
                  and r["ood_set"] in ("cifar100", "tin")])
  assert abs(res["group_means"]["auroc"]["random"]["knn"]["near"] - near) < 1e-12
  summary = (out / "detect_summary.md").read_text()
  assert "near (mean)" in summary and "OOD positive (OpenOOD v1.5)" in summary and "ID positive" in summary
  with open(out / "detect_rows.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == len(res["rows"]) and set(rows[0]) == {"run", "detector", "ood_set", "metric", "value"}
  assert (out / "detect_texture.csv").exists() and (out / "detect_roc_mnist.png").exists()
  # the images were brought to 32x32x3 as OpenOOD's test transform: grey -> RGB, crop
  b = openood.load(openood.BENCHMARKS["cifar10"], root, (32, 32, 3))
  first = np.asarray(Image.open(os.path.join(root, "images_classic", "texture", "00000.png")))
  np.testing.assert_array_equal(b.ood["texture"][[0]][0], images_lib.resize_crop(first, 32, 32, 3))
  assert b.ood["mnist"][[0]].shape == (1, 32, 32, 3)


@pytest.mark.slow
def test_all_class_detect_with_folder_and_npz_sets_and_odin_tuning(tmp_path):
  save_random_run(tmp_path / "wd", "digits", "cnn002", 10, (28, 28, 1))
  write_images(str(tmp_path / "svhn" / "a"), 40, (32, 32), "RGB", 1)  # nested, RGB -> grey
  write_images(str(tmp_path / "val"), 20, (28, 28), "L", 2)
  np.savez(tmp_path / "noise.npz", x=np.random.default_rng(3).integers(0, 256, (40, 28, 28), np.uint8))
  kw = dict(dataset="digits", model="cnn002", detectors=("msp", "energy", "mahalanobis", "nac"),
            ood=(f"svhn=folder:{tmp_path / 'svhn'}", f"blobs=npz:{tmp_path / 'noise.npz'}"),
            ood_val=f"folder:{tmp_path / 'val'}", ood_groups="mine:svhn,blobs")
  res = detect_exp.run(config(tmp_path, **kw), log=lambda *a: None)
  assert res["groups"] == {"mine": ["svhn", "blobs"]}
  assert res["splits"]["svhn"] == 40 and res["splits"]["blobs"] == 40 and res["splits"]["ood_val"] == 20
  from ncg_jax import data
  n_test = len(data.load("digits").test)  # all ten classes in-distribution
  assert res["splits"]["id_test"] + res["splits"]["id_val"] == n_test
  nac_hp = res["hyperparameters"]["random"]["nac"]
  assert len(res["search"]["random"]["nac"]) == 3 ** len([k for k in nac_hp if k.endswith("_alpha")])
  # ODIN's protocol: each set tuned on (at most) 1,000 of its own images, tested on the rest
  res = detect_exp.run(config(tmp_path, **{**kw, "tune": "odin", "ood_val": None,
                                          "detectors": ("msp", "nac")}), log=lambda *a: None)
  assert res["splits"]["svhn"] == 40
  assert {"nac@svhn", "nac@blobs"} <= set(res["hyperparameters"]["random"])


def test_spec_errors_are_one_line(tmp_path):
  from ncg_jax.registry import ConfigError
  with pytest.raises(ConfigError, match="no images"):
    imagesets.open_spec(f"folder:{tmp_path}", (28, 28, 1))
  with pytest.raises(ConfigError, match="NAME=SPEC"):
    detect_exp.parse_ood(["svhn"])
  with pytest.raises(ConfigError, match="unknown OOD sets"):
    detect_exp.parse_groups("near:a,b", ["a"])
  with pytest.raises(ConfigError, match="valid: openood:cifar10"):
    openood.parse("openood:cifar11")
  with pytest.raises(ConfigError, match="is not a directory"):
    openood.load(openood.BENCHMARKS["cifar10"], str(tmp_path / "missing"), (32, 32, 3))


def test_notebook_api_on_plain_functions_and_a_trained_model(digits9):
  rng = np.random.default_rng(0)
  w = rng.normal(size=(784, 9)).astype(np.float32) * 0.05
  head = {"kernel": w, "bias": np.zeros(9, np.float32)}
  features = lambda x: x.reshape(x.shape[0], -1)
  logits = lambda x: features(x) @ w
  train = (digits9.train.x[:300], digits9.train.y[:300])
  ood = {"heldout": digits9.ood.x[:50]}
  chosen = ["msp", "react", "odin", "vim", "relation", "nnguide", "klm"]
  res = detect.evaluate((logits, features, head), train, digits9.test.x[:60], ood,
                        id_val=digits9.test.x[60:100], ood_val=digits9.ood.x[50:80],
                        detectors=chosen)
  names = {r["detector"] for r in res.rows}
  assert names == set(chosen) and res.search["react"] and not res.search["msp"]
  assert len(res.rows) == len(names) * len({r["metric"] for r in res.rows})
  model = detect.Model(detect.FunctionNetwork(logits, features, head), *train, 9)
  assert {n for n in detect.DETECTORS.names() if detect.DETECTORS.get(n).unavailable(model)} \
      == {"nac", "mahalanobis_ensemble"}
  ref = roc_auc_score(np.r_[np.ones(60), np.zeros(50)], np.r_[res.scores["msp"]["id"],
                                                               res.scores["msp"]["heldout"]])
  assert abs(res.value("msp", "heldout", "auroc") - ref) < 1e-12
  assert res.to_csv().splitlines()[0] == "detector,ood_set,metric,value"
  # without a head, head-based detectors are skipped; explicit ones are an error
  res2 = detect.evaluate((logits, features), train, digits9.test.x[:60], ood, detectors=["msp", "knn"])
  assert {r["detector"] for r in res2.rows} == {"msp", "knn"}
  from ncg_jax.registry import ConfigError
  with pytest.raises(ConfigError, match="linear head"):
    detect.evaluate((logits, features), train, digits9.test.x[:60], ood, detectors=["react"])
  # a Trained: NAC runs (its perturb points), searched on the validation pair
  model = models.create("cnn002", 9)
  params, _ = models.init(model, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  res3 = detect.evaluate(Trained(model, params, {}, (28, 28, 1)), train, digits9.test.x[:60], ood,
                         id_val=digits9.test.x[60:100], ood_val=digits9.ood.x[50:80],
                         detectors=["nac", "energy"], arch="cnn002")
  assert res3.search["nac"] and res3.scores["nac"]["id"].shape == (60,)
