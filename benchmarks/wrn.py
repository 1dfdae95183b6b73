"""WideResNet train-step speed and model-FLOPs utilisation (MFU), ncg_jax vs PyTorch, and
nearest-neighbour throughput, faiss vs the JAX backend. Meant for a GPU host; runs anywhere.

python -m benchmarks.wrn [--model wrn_40_10 --batch 128 --precision float32|bfloat16]
                         [--peak_tflops N] [--steps ce,trades6] [--torch eager,compile]
                         [--nn N,Q,D]

MFU = the step's model FLOPs (`common.model_flops`: the matrix FLOPs of its jaxpr, every
attack step counted) / time / the device's peak. The peak is looked up from the device name
(dense tensor-core figures from NVIDIA's data sheets: H100/H200 SXM 989 TFLOP/s bf16, 495
TF32) or given with --peak_tflops; without one no MFU is printed.
Steps are timed in chains of 5 back to back, synchronised at the end of each chain, as a
training loop runs them (median over --repeat chains).
PyTorch runs the same architecture (written for this benchmark), same batch and steps,
channels-last, cuDNN autotuning on, bfloat16 autocast when --precision=bfloat16, both eager
and through `torch.compile` (Inductor, default mode; its compilation is timed apart).
"""
import argparse
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.common import TrainSteps, model_flops, row, setting, timeit
from ncg_jax import models, neighbors
from ncg_jax.train import losses
from ncg_jax.train.trainer import make_train_step

CHAIN = 5  # steps timed back to back, as a training loop runs them (the host queues ahead)
PEAK_TFLOPS = {  # (bfloat16, float32 via TF32) dense
    "H100": (989.0, 494.7), "H200": (989.0, 494.7), "A100": (312.0, 156.0),
}


def peak(precision: str, given: float | None) -> float | None:
  if given:
    return given
  kind = jax.devices()[0].device_kind
  for name, (bf16, tf32) in PEAK_TFLOPS.items():
    if name in kind:
      return bf16 if precision == "bfloat16" else tf32
  return None


def jax_steps(model_name: str, batch: int, precision: str, repeat: int,
              names: tuple[str, ...]) -> dict:
  model = models.create(model_name, 10, dtype=jnp.dtype(precision))
  params, state = models.init(model, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  rng = np.random.default_rng(0)
  x = jnp.asarray((rng.random((batch, 32, 32, 3)) * 255).astype(np.uint8))
  y = jnp.asarray(rng.integers(0, 10, batch))
  tx = optax.sgd(0.1, momentum=0.9)
  out = {}
  for name in names:
    step = make_train_step(model, losses.make_loss(name, losses.AttackConfig()), tx)
    fresh = jax.tree.map(jnp.copy, params)
    s = {"params": fresh, "model_state": jax.tree.map(jnp.copy, state), "opt": tx.init(fresh)}
    flops = model_flops(step, s, x, y, jax.random.key(0))
    run = TrainSteps(step, s, x, y, jax.random.key(0), chain=CHAIN)
    out[name] = (timeit(run, repeat=repeat) / CHAIN, flops)
  return out


def torch_steps(depth: int, width: int, batch: int, precision: str, repeat: int,
                mode: str, names: tuple[str, ...]) -> dict:
  import torch
  from torch import nn
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  torch.backends.cudnn.benchmark = True

  class Block(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout)
      self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.sc = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x):
      o = torch.relu(self.bn1(x))
      y = self.c2(torch.relu(self.bn2(self.c1(o))))
      return y + (self.sc(o) if self.sc is not None else x)

  n = (depth - 4) // 6
  layers, cin = [nn.Conv2d(3, 16, 3, 1, 1, bias=False)], 16
  for w, stride in ((16 * width, 1), (32 * width, 2), (64 * width, 2)):
    for i in range(n):
      layers.append(Block(cin, w, stride if i == 0 else 1))
      cin = w
  layers += [nn.BatchNorm2d(cin), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10)]
  net = nn.Sequential(*layers).to(dev).to(memory_format=torch.channels_last)
  opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
  model = torch.compile(net) if mode == "compile" else net
  x = torch.rand(batch, 3, 32, 32, device=dev).to(memory_format=torch.channels_last)
  y = torch.randint(0, 10, (batch,), device=dev)
  amp = torch.autocast(dev, dtype=torch.bfloat16, enabled=precision == "bfloat16")
  kl = lambda p_logits, q_logits: torch.sum(
      torch.softmax(p_logits, 1) * (torch.log_softmax(p_logits, 1) - torch.log_softmax(q_logits, 1)), 1)

  def ce():
    model.train(); opt.zero_grad()
    with amp:
      loss = nn.functional.cross_entropy(model(x), y)
    loss.backward(); opt.step()

  def trades():  # TRADES(6), L2 eps 2, 10 steps of 0.4, attack in eval mode
    model.eval()
    with torch.no_grad(), amp:
      p = model(x).float()
    xa = (x + 0.001 * torch.randn_like(x)).detach()
    for _ in range(10):
      xa.requires_grad_(True)
      with amp:
        g, = torch.autograd.grad(kl(p, model(xa).float()).sum(), xa)
      g = g / (g.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-12)
      d = (xa.detach() + 0.4 * g - x)
      d = d * torch.clamp(2.0 / (d.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-12), max=1.0)
      xa = torch.clamp(x + d, 0, 1).detach()
    model.train(); opt.zero_grad()
    with amp:
      logits = model(x).float()
      loss = nn.functional.cross_entropy(logits, y) + 6.0 * kl(logits, model(xa).float()).mean()
    loss.backward(); opt.step()

  sync = (lambda: torch.cuda.synchronize()) if dev == "cuda" else (lambda: None)
  out = {}
  for name, f in (("ce", ce), ("trades6", trades)):
    if name not in names:
      continue
    t0 = time.perf_counter()
    f(), sync()  # compiles under torch.compile
    out[name] = timeit(lambda: ([f() for _ in range(CHAIN)], sync()), repeat=repeat, warmup=2) / CHAIN
    print(f"  PyTorch {mode} {name}: first call {time.perf_counter() - t0:.0f} s", flush=True)
  return out


def nn_rows(n_db: int, n_q: int, dim: int, repeat: int):
  """Exact 1-NN from host arrays to host indices (the database's transfer included), with
  the peak memory of the device (JAX's allocator statistics) and of this process."""
  rng = np.random.default_rng(0)
  db = rng.random((n_db, dim), dtype=np.float32)
  q = rng.random((n_q, dim), dtype=np.float32)
  print(f"\nexact 1-NN, database {n_db:,} x {dim} ({db.nbytes / 2**30:.1f} GiB float32), "
        f"{n_q:,} queries\n")
  print(row("backend", "seconds", "queries/s", "device peak GiB", "host peak RSS GiB"))
  print(row(*["---"] * 5))
  for backend in ("faiss", "jax"):
    if backend == "faiss" and not neighbors.faiss_available():
      print(row("faiss", "not installed", "", "", ""))
      continue
    s = timeit(lambda: neighbors.nearest(db, q, backend=backend), repeat=repeat, warmup=1)
    stats = jax.devices()[0].memory_stats() or {}
    dev_peak = f"{stats['peak_bytes_in_use'] / 2**30:.1f}" if "peak_bytes_in_use" in stats else "n/a"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(row(backend, f"{s:.1f}", f"{n_q / s:,.0f}", dev_peak, f"{rss:.1f}"))


def main():
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--model", default="wrn_40_10")
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
  ap.add_argument("--repeat", type=int, default=10)
  ap.add_argument("--peak_tflops", type=float, default=None)
  ap.add_argument("--steps", default="ce,trades6", help="train steps to time (ce, trades6), or none")
  ap.add_argument("--torch", default="eager,compile",
                  help="PyTorch modes to run beside (eager, compile), or none")
  ap.add_argument("--nn", default="100000,10000,640", help="database,queries,dim (or none)")
  ap.add_argument("--nn_repeat", type=int, default=3)
  args = ap.parse_args()
  _, depth, width = args.model.split("_")
  names = tuple(n for n in args.steps.split(",") if n not in ("", "none"))
  j = jax_steps(args.model, args.batch, args.precision, args.repeat, names)
  modes = [m for m in args.torch.split(",") if m not in ("", "none")] if names else []
  t = {m: torch_steps(int(depth), int(width), args.batch, args.precision, args.repeat, m, names)
       for m in modes}
  pk = peak(args.precision, args.peak_tflops)
  print(f"\n{args.model}, batch {args.batch}, {args.precision}, {jax.devices()[0].device_kind}, "
        f"jax {jax.__version__}\n{setting()}")
  if names:
    print("\n" + row("train step", "ncg_jax img/s", "model TFLOP/s", "MFU",
                     *[f"PyTorch {m} img/s" for m in modes], "ncg_jax / best PyTorch"))
    print(row(*["---"] * (5 + len(modes))))
    for name, (sec, flops) in j.items():
      tflops = flops / sec / 1e12
      best = min((t[m][name] for m in modes), default=None)
      print(row(name, f"{args.batch / sec:,.0f}", f"{tflops:.1f}",
                f"{tflops / pk:.1%}" if pk else "n/a",
                *[f"{args.batch / t[m][name]:,.0f}" for m in modes],
                f"{best / sec:.2f}" if best else "-"))
    print("\nmodel FLOPs per image: " + ", ".join(f"{n} {f / args.batch / 1e9:.1f} G"
                                                for n, (_, f) in j.items()))
  if args.nn != "none":
    n_db, n_q, dim = (int(v) for v in args.nn.split(","))
    nn_rows(n_db, n_q, dim, args.nn_repeat)


if __name__ == "__main__":
  main()
