"""Runs training, an attack, a detector and nearest-neighbour search on however many
devices JAX sees, and saves the results; tests/test_sharding.py runs it on 1 and 4 fake CPU
devices and compares."""
import sys

import ncg_jax  # noqa: F401  (XLA:CPU settings before JAX starts)
import jax  # noqa: E402
import numpy as np  # noqa: E402

from ncg_jax import data, detect, models, neighbors  # noqa: E402
from ncg_jax.attacks import cw_l2  # noqa: E402
from ncg_jax.train.trainer import TrainConfig, train  # noqa: E402


def main(out: str, workdir: str) -> None:
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (256, 28, 28, 1), dtype=np.uint8)
  y = (x.reshape(256, -1).mean(1) > 127).astype(np.int32) + 2 * (x[:, :14].mean((1, 2, 3)) > 127)
  cfg = TrainConfig(batch_size=64, epochs=2, milestones=(1,), lr=0.05)
  trained = train(models.create("cnn002", 4), data.Split(x, y), cfg, workdir, log=lambda s: None)
  xf = x[:24].astype(np.float32) / 255.0
  adv, ok = cw_l2(trained.logits_fn(), xf, y[:24], binary_search_steps=2, max_iterations=30,
                  initial_const=1.0, batch_size=24)
  from ncg_jax.batching import map_batches
  odin = map_batches(lambda xb: detect.odin(trained.logits_fn(), xb), xf, batch_size=16,
                     fit_last=True)  # 16 + 8 rows: a shorter last batch split over the devices
  db = rng.normal(size=(1000, 37)).astype(np.float32)
  _, nn = neighbors.nearest(db, db[:50] + 0.01, k=3, backend="jax", db_block=100)
  np.savez(out, devices=jax.device_count(), adv=adv, ok=ok, odin=odin, nn=nn,
           **{"/".join(map(str, k)): np.asarray(v)
              for k, v in jax.tree_util.tree_flatten_with_path(trained.params)[0]})


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])
