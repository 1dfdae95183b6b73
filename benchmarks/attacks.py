"""Attack and robust-training throughput on CNN002, each also as a multiple of one
forward+backward pass (gradient w.r.t. the parameters) of the same batch. The attacks are
also timed on the same network written in plain Flax (`nn.Conv`, `nn.max_pool`) and passed
as a function, as a notebook user would.

python -m benchmarks.attacks [--batch 128] [--cw_iterations 1000]
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.common import PlainCNN002, TrainSteps, row, setting, timeit
from ncg_jax import models
from ncg_jax.attacks import cw_l2, pgd
from ncg_jax.train import losses
from ncg_jax.models import Trained
from ncg_jax.train.trainer import make_train_step


def main():
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--repeat", type=int, default=5)
  ap.add_argument("--cw_iterations", type=int, default=1000)
  args = ap.parse_args()
  b, k = args.batch, 9
  model = models.create("cnn002", k)
  params, _ = models.init(model, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  params["head"]["kernel"] = 0.05 * jax.random.normal(jax.random.key(1), (200, k))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((b, 28, 28, 1), dtype=np.float32))
  y = jnp.asarray(rng.integers(0, k, b))
  logits_fn = Trained(model, params, {}).logits_fn()
  plain = PlainCNN002(k)
  plain_fn = jax.tree_util.Partial(plain.apply, plain.init(jax.random.key(0), x[:1]))

  fb = jax.jit(jax.grad(lambda p: losses.cross_entropy(model.apply({"params": p}, x)[0], y).mean()))
  t_fb = timeit(fb, params, repeat=args.repeat)
  attack = losses.AttackConfig()
  pgd_fn = jax.jit(lambda f, x, y, key: pgd(f, x, y, eps=attack.eps, norm="l2", steps=10,
                                            step_size=attack.alpha, key=key))
  cw = lambda f: lambda: cw_l2(f, x, y, binary_search_steps=1, max_iterations=args.cw_iterations,
                               abort_early=False, batch_size=b)
  results = {}
  for label, f in (("", logits_fn), (", plain Flax network", plain_fn)):
    results["PGD-10 (L2)" + label] = timeit(pgd_fn, f, x, y, jax.random.key(0), repeat=args.repeat)
    results[f"CW-L2, one binary step of {args.cw_iterations} iterations" + label] = timeit(
        cw(f), repeat=2, warmup=1)
  t_cw = results[f"CW-L2, one binary step of {args.cw_iterations} iterations"]
  tx = optax.sgd(0.01, momentum=0.9)
  for name in ("ce", "trades6", "advce"):
    step = make_train_step(model, losses.make_loss(name, attack), tx)
    fresh = jax.tree.map(jnp.copy, params)  # the step donates its state
    state = {"params": fresh, "model_state": {}, "opt": tx.init(fresh)}
    x_u8 = jnp.asarray((rng.random((b, 28, 28, 1)) * 255).astype(np.uint8))
    run_step = TrainSteps(step, state, x_u8, y, jax.random.key(1))
    results[f"train step {name}"] = timeit(run_step, repeat=args.repeat)

  print(f"\nCNN002, batch {b}, jax {jax.__version__} ({jax.default_backend()})\n{setting()}\n")
  print(row("workload", "images/s", "x one forward+backward"))
  print(row("---", "---", "---"))
  print(row("forward+backward (params)", f"{b / t_fb:,.0f}", "1.0"))
  for name, t in results.items():
    print(row(name, f"{b / t:,.1f}", f"{t / t_fb:.1f}"))
  print(f"\nCW-L2 per iteration: {t_cw / args.cw_iterations * 1e3:.1f} ms "
        f"({t_cw / args.cw_iterations / t_fb:.2f} x one forward+backward)")


if __name__ == "__main__":
  main()
