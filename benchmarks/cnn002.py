"""CNN002 speed, ncg_jax vs PyTorch (same network, same weights, same batch), and
nearest-neighbour queries/s for the faiss and JAX backends beside numpy brute force.

PyTorch runs eagerly in two memory formats, NCHW (as the network is written) and
channels-last (oneDNN's NHWC convolutions, faster on the CPU), and ncg_jax's ratio is taken
against the faster of the two for each figure. `torch.compile` was slower than both on the
2-core VM (`RESULTS.md`) and is left out.

Each figure also as model FLOPs (`common.model_flops`, a multiple of the forward's: what
"x forward" would be if every program ran at the forward's FLOP rate) and as ncg_jax's FLOP
rate against a float32 2048 x 2048 matmul timed in the same rounds (how near the machine's
attainable matrix rate each program runs).

python -m benchmarks.cnn002 [--batch 128] [--threads 2]
"""
import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.common import (MatmulReference, TrainSteps, model_flops, row, setting, timeit,
                               timeit_interleaved)
from ncg_jax import models, neighbors
from ncg_jax.train import losses
from ncg_jax.train.trainer import make_train_step


def torch_cnn002(params, num_classes):
  import torch
  from torch import nn

  class Net(nn.Module):
    def __init__(self):
      super().__init__()
      self.c1, self.c2 = nn.Conv2d(1, 32, 3), nn.Conv2d(32, 32, 3)
      self.c3, self.c4 = nn.Conv2d(32, 64, 3), nn.Conv2d(64, 64, 3)
      self.f1, self.f2, self.head = nn.Linear(1024, 200), nn.Linear(200, 200), nn.Linear(200, num_classes)
      self.drop = nn.Dropout(0.5)

    def forward(self, x):
      r = torch.relu
      x = nn.functional.max_pool2d(r(self.c2(r(self.c1(x)))), 2)
      x = nn.functional.max_pool2d(r(self.c4(r(self.c3(x)))), 2)
      x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # NHWC flatten order, as Flax
      return self.head(r(self.f2(self.drop(r(self.f1(x))))))

  net = Net()
  with torch.no_grad():
    for name, mod in [("conv1", net.c1), ("conv2", net.c2), ("conv3", net.c3), ("conv4", net.c4)]:
      mod.weight.copy_(torch.from_numpy(np.asarray(params[name]["kernel"]).transpose(3, 2, 0, 1).copy()))
      mod.bias.copy_(torch.from_numpy(np.asarray(params[name]["bias"])))
    for name, mod in [("fc1", net.f1), ("fc2", net.f2), ("head", net.head)]:
      mod.weight.copy_(torch.from_numpy(np.asarray(params[name]["kernel"]).T.copy()))
      mod.bias.copy_(torch.from_numpy(np.asarray(params[name]["bias"])))
  return net


def model_rows(batch: int, repeat: int, rounds: int = 5):
  import torch
  k = 9
  model = models.create("cnn002", k)
  params, _ = models.init(model, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  # a non-zero head so gradients reach every layer in both frameworks
  params = jax.tree.map(lambda p: p, params)
  params["head"]["kernel"] = 0.05 * jax.random.normal(jax.random.key(1), (200, k))
  rng = np.random.default_rng(0)
  x_np = rng.random((batch, 28, 28, 1), dtype=np.float32)
  y_np = rng.integers(0, k, batch)
  x, y = jnp.asarray(x_np), jnp.asarray(y_np)

  fwd = jax.jit(lambda p, x: model.apply({"params": p}, x)[0])
  def ce(p, x):
    return losses.cross_entropy(model.apply({"params": p}, x)[0], y).mean()
  grad_p = jax.jit(jax.grad(ce))
  grad_x = jax.jit(jax.grad(ce, argnums=1))
  tx = optax.sgd(0.01, momentum=0.9)
  step = make_train_step(model, losses.make_loss("ce"), tx)
  state = {"params": params, "model_state": {}, "opt": tx.init(params)}
  jax_step = TrainSteps(step, state, x, y, jax.random.key(0))

  # PyTorch as written (NCHW) and channels-last, its faster CPU layout for convolutions here
  # (oneDNN runs NHWC directly); ncg_jax is compared with the faster of the two per figure
  formats = {"NCHW": torch.contiguous_format, "channels-last": torch.channels_last}
  torch_fns = {}
  yt = torch.from_numpy(y_np)
  lossf = torch.nn.CrossEntropyLoss()
  for fmt, memory_format in formats.items():
    net = torch_cnn002(params, k).to(memory_format=memory_format)
    xt = torch.from_numpy(x_np.transpose(0, 3, 1, 2).copy()).contiguous(memory_format=memory_format)
    if fmt == "NCHW":
      with torch.no_grad():
        net.eval()
        err = float(np.abs(net(xt).numpy() - np.asarray(fwd(params, x))).max())
    torch_fns[fmt] = torch_procedures(net, xt, yt, lossf)

  jax_fns = {"forward": lambda: fwd(params, x), "forward+backward (params)": lambda: grad_p(params, x),
             "forward+backward (input)": lambda: grad_x(params, x), "train step": jax_step}
  flops = {"forward": model_flops(fwd, params, x),
           "forward+backward (params)": model_flops(jax.grad(ce), params, x),
           "forward+backward (input)": model_flops(jax.grad(ce, argnums=1), params, x),
           "train step": model_flops(step, state, x, y, jax.random.key(0))}
  matmul = MatmulReference()
  tj, tt, rate = {}, {fmt: {} for fmt in formats}, {}
  for name in jax_fns:  # each figure: both frameworks and the matmul in alternating rounds
    t = timeit_interleaved({"jax": jax_fns[name], "matmul": matmul,
                            **{fmt: torch_fns[fmt][name] for fmt in formats}},
                           repeat=repeat, rounds=rounds)
    tj[name], rate[name] = t["jax"], matmul.fraction(flops[name], t["jax"], t["matmul"])
    for fmt in formats:
      tt[fmt][name] = t[fmt]
  best = {name: min(tt[fmt][name] for fmt in formats) for name in tj}
  print(f"\nCNN002, batch {batch}, identical weights (max |logit diff| {err:.1e}), "
        f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)\n{setting()}\n")
  print(row("figure", "ncg_jax img/s", "PyTorch NCHW img/s", "PyTorch channels-last img/s",
            "ncg_jax / best PyTorch", "ncg_jax x forward", "best PyTorch x forward",
            "FLOPs x forward", "ncg_jax GFLOP/s", "x matmul rate"))
  print(row(*["---"] * 10))
  for name in tj:
    print(row(name, f"{batch / tj[name]:,.0f}",
              *(f"{batch / tt[fmt][name]:,.0f}" for fmt in formats),
              f"{best[name] / tj[name]:.2f}", f"{tj[name] / tj['forward']:.1f}",
              f"{best[name] / best['forward']:.1f}", f"{flops[name] / flops['forward']:.2f}",
              f"{flops[name] / tj[name] / 1e9:.0f}", f"{rate[name]:.2f}"))


def torch_procedures(net, xt, yt, lossf) -> dict:
  """PyTorch's four timed procedures on `net` and batch `xt` (in `net`'s memory format)."""
  import torch
  opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

  def forward():
    net.eval()
    with torch.no_grad():
      return net(xt)
  def grad_params():
    net.eval(); net.zero_grad()
    lossf(net(xt), yt).backward()
  def grad_input():
    net.eval()
    xg = xt.clone().requires_grad_(True)
    for p in net.parameters():
      p.requires_grad_(False)
    lossf(net(xg), yt).backward()
    for p in net.parameters():
      p.requires_grad_(True)
  def train_step():
    net.train(); opt.zero_grad()
    lossf(net(xt), yt).backward()
    opt.step()
  return {"forward": forward, "forward+backward (params)": grad_params,
          "forward+backward (input)": grad_input, "train step": train_step}


def nn_rows(n_db: int, n_q: int, dim: int):
  rng = np.random.default_rng(0)
  db = rng.random((n_db, dim), dtype=np.float32)
  q = rng.random((n_q, dim), dtype=np.float32)
  def brute():
    d = (q ** 2).sum(1)[:, None] - 2 * q @ db.T + (db ** 2).sum(1)[None]
    return d.argmin(1)
  t = {"numpy brute force": timeit(brute, repeat=3, warmup=1)}
  for backend in ("faiss", "jax"):
    t[backend] = timeit(lambda: neighbors.nearest(db, q, backend=backend), repeat=3, warmup=1)
  print(f"\nexact 1-NN, database {n_db} x {dim}, {n_q} queries\n")
  print(row("backend", "queries/s", "vs numpy"))
  print(row("---", "---", "---"))
  for name, s in t.items():
    print(row(name, f"{n_q / s:,.0f}", f"{t['numpy brute force'] / s:.2f}"))


def main():
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--repeat", type=int, default=10, help="calls per round")
  ap.add_argument("--rounds", type=int, default=5, help="alternating ncg_jax / PyTorch rounds")
  ap.add_argument("--threads", type=int, default=os.cpu_count())
  args = ap.parse_args()
  import torch
  torch.set_num_threads(args.threads)
  model_rows(args.batch, args.repeat, args.rounds)
  nn_rows(50_000, 2_000, 784)


if __name__ == "__main__":
  main()
