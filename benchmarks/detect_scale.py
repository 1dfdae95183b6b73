"""Detector cost at the benchmarks' real sizes, on synthetic data.

python -m benchmarks.detect_scale [--parts cost,cifar10,imagenet] [--scale 1.0]

cost      each registered detector's time per batch as a multiple of one forward pass of
          the same batch (ResNet-18 at 32x32, batch 256; ResNet-50 at 224x224, batch 64),
          fitted state excluded, its default hyperparameters; everything the detector
          computes from the images (forward, VJPs, features) included.
cifar10   end to end: OpenOOD v1.5's CIFAR-10 benchmark at its real sizes (fit on 50,000;
          ID val 1,000; ID test 9,000; OOD val 1,000; CIFAR-100 10,000, TIN 7,793, MNIST
          70,000, SVHN 26,032, Textures 5,640, Places365 35,195) with every detector and APS,
          ResNet-18, random uint8 images held in memory.
imagenet  streaming: 50,000 ID and three 10,000-image OOD sets at 224x224 read through
          `LazyImages` from JPEG bytes (decoded and resized on threads per batch) into
          ResNet-50's logits, features and NAC's pooled states; peak host memory (RSS) and
          images/s.
`--scale` multiplies every set size (use 0.01 or so on a CPU).
"""
import argparse
import os
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import row, setting, timeit
from ncg_jax import models
from ncg_jax.batching import map_batches
from ncg_jax.data import imagesets
from ncg_jax.detect import evaluation, nac
from ncg_jax.detect.aps import grid_points
from ncg_jax.detect.registry import DETECTORS, Inputs, Model, score
from ncg_jax.models import Trained
from ncg_jax.models.trained import to_input


def random_model(arch: str, k: int, size: int) -> Trained:
  model = models.create(arch, k)
  params, state = models.init(model, jax.random.key(0), jnp.zeros((1, size, size, 3)))
  return Trained(model, params, state, (size, size, 3))


def images(n: int, size: int, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def cost(arch: str, size: int, batch: int, k: int, n_fit: int, repeat: int) -> None:
  trained = random_model(arch, k, size)
  train_x = images(n_fit, size, 0)
  model = Model(trained, train_x, np.arange(n_fit) % k, k, arch=arch, nac_subset=min(1000, n_fit))
  x = images(batch, size, 1)
  model.id_val = Inputs(model, images(batch, size, 2), np.arange(batch) % k)
  fwd = timeit(lambda: Inputs(model, x).logits, repeat=repeat)
  print(f"\n{arch} at {size}x{size}, batch {batch}, {jax.devices()[0].device_kind}: "
        f"forward {fwd * 1e3:.1f} ms ({batch / fwd:.0f} img/s)\n")
  print(row("detector", "ms / batch", "x forward", "fit s"))
  print(row("---", "---:", "---:", "---:"))
  for name in DETECTORS.names():
    det = DETECTORS.get(name)
    t0 = time.perf_counter()
    state = det.fit(model)
    fit_s = time.perf_counter() - t0
    hp = (grid_points(det.grid(model)) or [{}])[0]
    t = timeit(lambda: score(name, state, Inputs(model, x, with_nac=name == "nac"), hp),
               repeat=repeat, warmup=1)
    print(row(name, f"{t * 1e3:.1f}", f"{t / fwd:.2f}", f"{fit_s:.1f}"))


CIFAR10_SIZES = {"fit": 50000, "id_val": 1000, "id_test": 9000, "ood_val": 1000,
                 "cifar100": 10000, "tin": 7793, "mnist": 70000, "svhn": 26032,
                 "texture": 5640, "places365": 35195}


def cifar10(scale: float) -> None:
  n = {k: max(20, int(v * scale)) for k, v in CIFAR10_SIZES.items()}
  trained = random_model("resnet18", 10, 32)
  model = Model(trained, images(n["fit"], 32, 0), np.arange(n["fit"]) % 10, 10, arch="resnet18",
                benchmark="cifar10")
  mk = lambda key, seed, y=None: Inputs(model, images(n[key], 32, seed), y, with_nac=True)
  ood = {name: mk(name, 10 + i) for i, name in enumerate(("cifar100", "tin", "mnist", "svhn",
                                                           "texture", "places365"))}
  t0 = time.perf_counter()
  result = evaluation.run_detectors(model, mk("id_test", 3), ood, DETECTORS.names(),
                                    mk("id_val", 4, np.arange(n["id_val"]) % 10), mk("ood_val", 5),
                                    log=lambda m: print("  " + m, flush=True))
  total = time.perf_counter() - t0
  print(f"\nCIFAR-10 benchmark (OpenOOD v1.5 sizes x {scale}: {sum(n.values())} images), "
        f"{len(result.hyperparameters)} detectors with APS, ResNet-18 on "
        f"{jax.devices()[0].device_kind}: {total:.0f} s end to end")


def imagenet(scale: float, batch: int) -> None:
  import tempfile
  from PIL import Image
  rng = np.random.default_rng(0)
  folder = tempfile.mkdtemp()
  files = []
  for i in range(64):  # 64 distinct 375x500 JPEG files (ImageNet's typical size), reused
    files.append(f"{folder}/{i}.jpg")
    Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(files[-1], quality=90)
  lazy = lambda n, name: imagesets.from_files([files[i % 64] for i in range(n)], (224, 224, 3), name)
  trained = random_model("resnet50", 1000, 224)
  sets = {"id_test": int(50000 * scale), **{f"ood{i}": int(10000 * scale) for i in range(3)}}
  model = Model(trained, lazy(1000, "train"), np.arange(1000), 1000, arch="resnet50",
                benchmark="imagenet")
  rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
  print(f"\nImageNet-scale streaming, ResNet-50 at 224, batch {batch}, "
        f"{jax.devices()[0].device_kind}, {os.cpu_count()} host cores; peak RSS before: {rss0:.2f} GiB")
  print(row("set", "images", "s", "img/s", "peak RSS GiB"))
  print(row("---", "---:", "---:", "---:", "---:"))
  for name, count in sets.items():
    x = lazy(count, name)
    t0 = time.perf_counter()
    out = map_batches(lambda xb: nac.pooled_outputs(trained.model, trained.variables(),
                                                    to_input(xb), model.nac_layers),
                      x, batch_size=batch)
    jax.block_until_ready(out)
    s = time.perf_counter() - t0
    print(row(name, count, f"{s:.1f}", f"{count / s:.0f}",
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.2f}"))
  x = lazy(batch, "decode")
  t = timeit(lambda: x[np.arange(batch)], repeat=3, warmup=1)
  print(f"decode + resize + crop alone: {batch / t:.0f} img/s (worker processes; RSS counts "
        "this process only)")


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--parts", default="cost,cifar10,imagenet")
  p.add_argument("--scale", type=float, default=1.0)
  p.add_argument("--repeat", type=int, default=5)
  args = p.parse_args()
  print(setting())
  parts = args.parts.split(",")
  if "cost" in parts:
    cost("resnet18", 32, 256, 10, max(100, int(5000 * args.scale)), args.repeat)
    if args.scale >= 0.1:  # every ImageNet class needs training images
      cost("resnet50", 224, 64, 1000, 2000, args.repeat)
  if "cifar10" in parts:
    cifar10(args.scale)
  if "imagenet" in parts:
    imagenet(args.scale, 128)


if __name__ == "__main__":
  main()
