"""Does training wait on data? The training loop's batch feed against its train step.

python -m benchmarks.pipeline [--sets cifar10,imgnet100] [--precision bfloat16]
                              [--batch N] [--steps 50] [--imgnet_n 126689] [--arch NAME]

For each dataset shape, uint8 images held in host memory as `ncg_jax.data.load` returns them
(random contents; CIFAR-10: 50,000 x 32 x 32 x 3, ImgNet100: `--imgnet_n` x 112 x 112 x 3),
at the recipe's batch size (`ncg_jax.recipes`: 64 and 128) unless --batch is given:
  feed:   `trainer.feed` (the shuffled index plan's rows gathered from host memory and placed
          on the devices) over `--steps` batches, timed until every batch is on the device
          (median of 3 rounds after a warm-up);
  step:   the jit-compiled CE train step of the dataset's network (wrn_40_10, resnet50) on a
          batch already on the device, `--steps` steps back to back (median of 3 rounds);
  loop:   both, as `trainer.train` runs them (one step per fed batch, nothing awaited between
          steps), timed until the last step is done.
Target: feed / step >= 3 img/s ratio, and loop within a few percent of step.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.common import TrainSteps, row, setting, timeit
from ncg_jax import models, recipes, sharding
from ncg_jax.batching import train_batches
from ncg_jax.data import Split
from ncg_jax.train import losses
from ncg_jax.train.trainer import feed, make_train_step

SETS = {"cifar10": ((32, 32, 3), 50_000, "wrn_40_10"),
        "imgnet100": ((112, 112, 3), 126_689, "resnet50")}


def images(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
  """n random uint8 images, every page written (a 64-image random block repeated)."""
  block = np.random.default_rng(seed).integers(0, 256, (64, *shape), dtype=np.uint8)
  x = np.empty((n, *shape), np.uint8)
  for s in range(0, n, 64):
    x[s:s + 64] = block[:n - s]
  return x


def measure(name: str, batch: int | None, precision: str, steps: int, n: int | None,
            arch: str | None) -> dict:
  shape, n_default, default_arch = SETS[name]
  arch = arch or default_arch
  n = n or n_default
  batch = batch or recipes.pixel(name).batch_size
  data = Split(images(n, shape), np.random.default_rng(1).integers(0, 9, n).astype(np.int32))
  plan = train_batches(n, batch, 0, 0)[:steps]
  # warm-up first: the first placement also starts the device's runtime
  t_feed = timeit(lambda: [feed(data, idx) for idx in plan], repeat=3) / len(plan)

  model = models.create(arch, 9, dtype=jnp.dtype(precision))
  params, state = models.init(model, jax.random.key(0), jnp.zeros((1, *shape)))
  tx = optax.sgd(0.01, momentum=0.9)
  step = make_train_step(model, losses.make_loss("ce"), tx)
  s = sharding.replicate({"params": params, "model_state": state, "opt": tx.init(params)})
  x, y = feed(data, plan[0])

  chain = TrainSteps(step, s, x, y, jax.random.key(0), chain=len(plan))  # back to back
  t_step = timeit(chain, repeat=3) / len(plan)

  s = chain.state
  t0 = time.perf_counter()
  for i, idx in enumerate(plan):
    s, m = step(s, *feed(data, idx), jax.random.key(i))
  jax.block_until_ready(m)
  t_loop = (time.perf_counter() - t0) / len(plan)
  return {"set": name, "arch": arch, "batch": batch, "shape": "x".join(map(str, shape)),
          "feed": batch / t_feed, "step": batch / t_step, "loop": batch / t_loop}


def main():
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--sets", default="cifar10,imgnet100")
  ap.add_argument("--precision", default="bfloat16", choices=["float32", "bfloat16"])
  ap.add_argument("--batch", type=int, default=None)
  ap.add_argument("--steps", type=int, default=50)
  ap.add_argument("--imgnet_n", type=int, default=None)
  ap.add_argument("--arch", default=None, help="one network for every set (a CPU check)")
  args = ap.parse_args()
  rows = [measure(name, args.batch, args.precision, args.steps,
                  args.imgnet_n if name == "imgnet100" else None, args.arch)
          for name in args.sets.split(",")]
  print(f"\n{args.precision}, {jax.device_count()} x {jax.devices()[0].device_kind}, "
        f"jax {jax.__version__}\n{setting()}\n")
  print(row("set", "images", "network", "batch", "feed img/s", "step img/s", "feed / step",
            "loop img/s", "loop / step"))
  print(row(*["---"] * 9))
  for r in rows:
    print(row(r["set"], r["shape"], r["arch"], r["batch"], f"{r['feed']:,.0f}", f"{r['step']:,.0f}",
              f"{r['feed'] / r['step']:.1f}", f"{r['loop']:,.0f}", f"{r['loop'] / r['step']:.2f}"))


if __name__ == "__main__":
  main()
