"""Attack and robust-training throughput on CNN002, each also as a multiple of one
forward+backward pass (gradient w.r.t. the parameters) of the same batch. The attacks are
also timed on the same network written in plain Flax (`nn.Conv`, `nn.max_pool`) and in plain
`lax` with PyTorch's NCHW/OIHW layout (`common.plain_lax_cnn002`), each passed as a function,
as a notebook user would. Each workload also as model FLOPs per image
(`common.model_flops`; not for CW-L2, whose early-abort `while` loop `model_flops` counts
once) and as its FLOP rate against a float32 2048 x 2048 matmul timed in alternation with it
(how near the machine's attainable matrix rate it runs).

python -m benchmarks.attacks [--batch 128] [--cw_iterations 1000]
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.common import (MatmulReference, PlainCNN002, TrainSteps, model_flops,
                               plain_lax_cnn002, row, setting, timeit_interleaved)
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

  matmul = MatmulReference()
  results, flops = {}, {}

  def measure(name, fn, n_flops=None, repeat=args.repeat):
    t = timeit_interleaved({"w": fn, "matmul": matmul}, repeat=repeat, rounds=2, warmup=1)
    results[name] = (t["w"], t["matmul"])
    flops[name] = n_flops

  loss_p = lambda p: losses.cross_entropy(model.apply({"params": p}, x)[0], y).mean()
  fb = jax.jit(jax.grad(loss_p))
  measure("forward+backward (params)", lambda: fb(params), model_flops(jax.grad(loss_p), params))
  attack = losses.AttackConfig()
  pgd_fn = jax.jit(lambda f, x, y, key: pgd(f, x, y, eps=attack.eps, norm="l2", steps=10,
                                            step_size=attack.alpha, key=key))
  cw = lambda f, xx: lambda: cw_l2(f, xx, y, binary_search_steps=1,
                                   max_iterations=args.cw_iterations, abort_early=False,
                                   batch_size=b)
  cw_name = f"CW-L2, one binary step of {args.cw_iterations} iterations"
  for label, f, xx in (("", logits_fn, x), (", plain Flax network", plain_fn, x),
                       (", plain lax NCHW network", jax.tree_util.Partial(plain_lax_cnn002(params)),
                        x.transpose(0, 3, 1, 2))):
    measure("PGD-10 (L2)" + label, lambda: pgd_fn(f, xx, y, jax.random.key(0)),
            model_flops(pgd_fn, f, xx, y, jax.random.key(0)))
    measure(cw_name + label, cw(f, xx), repeat=1)
  tx = optax.sgd(0.01, momentum=0.9)
  for name in ("ce", "trades6", "advce"):
    step = make_train_step(model, losses.make_loss(name, attack), tx)
    fresh = jax.tree.map(jnp.copy, params)  # the step donates its state
    state = {"params": fresh, "model_state": {}, "opt": tx.init(fresh)}
    x_u8 = jnp.asarray((rng.random((b, 28, 28, 1)) * 255).astype(np.uint8))
    run_step = TrainSteps(step, state, x_u8, y, jax.random.key(1))
    measure(f"train step {name}", run_step, model_flops(step, state, x_u8, y, jax.random.key(1)))

  t_fb = results["forward+backward (params)"][0]
  t_cw = results[cw_name][0]
  print(f"\nCNN002, batch {b}, jax {jax.__version__} ({jax.default_backend()})\n{setting()}\n")
  print(row("workload", "images/s", "x one forward+backward", "MFLOP per image", "GFLOP/s",
            "x matmul rate"))
  print(row(*["---"] * 6))
  for name, (t, t_mm) in results.items():
    n = flops[name]
    rates = (["-"] * 3 if n is None else
             [f"{n / b / 1e6:,.0f}", f"{n / t / 1e9:.0f}", f"{matmul.fraction(n, t, t_mm):.2f}"])
    print(row(name, f"{b / t:,.1f}", f"{t / t_fb:.1f}", *rates))
  print(f"\nCW-L2 per iteration: {t_cw / args.cw_iterations * 1e3:.1f} ms "
        f"({t_cw / args.cw_iterations / t_fb:.2f} x one forward+backward)")


if __name__ == "__main__":
  main()
