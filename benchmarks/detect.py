"""OOD detector speed on CNN002: images/s and cost as a multiple of one forward pass of
the same batch, beside PyTorch re-implementations of the procedures users would otherwise
run (written for this benchmark): the original ODIN and GradNorm loops (one image at a
time) and OpenOOD v1.5's batched ODIN and per-sample GradNorm; the forward and the batched
ODIN also channels-last, PyTorch's faster CPU layout for convolutions.

ODIN is measured through ncg_jax's CNN002 against ncg_jax's forward as ncg_jax runs it (the
variables as a `Partial`'s arguments, the way ODIN's own programs get them; a forward with the
variables compiled in is printed beside it), and through the same network written as plain
Flax (`nn.Conv`, `nn.max_pool`) and as plain `lax` in PyTorch's NCHW/OIHW layout
(`common.plain_lax_cnn002`), each passed as a function, as a notebook user would; and,
in a second process started with NCG_JAX_KEEP_XLA_DEFAULTS=1, with XLA's CPU defaults (what
a user gets when JAX ran before ncg_jax was imported).

ODIN at two epsilons from one gradient (what ODIN's validation search runs per temperature)
is printed beside it: both scores of each image, as one row.

ODIN's validation search (its 8-point grid on ID and OOD validation images) is timed both
ways: one point at a time and through `Detector.score_points`.

ODIN is also timed through other ncg_jax architectures at CIFAR's input shape (random
weights; `--archs`, `--arch_batch`), each against its own forward.

python -m benchmarks.detect [--batch 256] [--loop_images 64] [--no_defaults_run]
                            [--archs wrn_16_4,resnet18,densenet_bc_40_12] [--arch_batch 64]
                            [--search_images 1000]
"""
import argparse
import functools
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import (PlainCNN002, model_flops, plain_lax_cnn002, row, setting, timeit,
                               timeit_interleaved)
from benchmarks.cnn002 import torch_cnn002
from ncg_jax import detect, models, xla_cpu
from ncg_jax.detect import nac
from ncg_jax.models import Trained


# a network given as a `Partial` on a batch, its variables traced: ncg_jax's forward as ncg_jax
# runs it; one program per network (the jit cache keys on the `Partial`'s treedef)
_forward = jax.jit(lambda f, xx: f(xx))


def cnn002(classes: int):
  """ncg_jax's CNN002 with seeded random weights and a non-zero head (its initial head is
  zeros, which would make every logit equal): (model, params)."""
  model = models.create("cnn002", classes)
  params, _ = models.init(model, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  params["head"]["kernel"] = 0.05 * jax.random.normal(jax.random.key(1), (200, classes))
  return model, params


def odin_rows(batch: int, repeat: int) -> tuple[dict, dict]:
  """Forward and ODIN through ncg_jax's CNN002 and through the plain Flax and NCHW `lax`
  networks: seconds per batch, and model FLOPs (`common.model_flops`) per batch."""
  x = jnp.asarray(np.random.default_rng(0).random((batch, 28, 28, 1), dtype=np.float32))
  model, params = cnn002(9)
  plain = PlainCNN002()
  pvars = plain.init(jax.random.key(0), x[:1])
  own_fn = Trained(model, params, {}).logits_fn()
  plain_fn = lambda xx: plain.apply(pvars, xx)
  lax_fn, x_nchw = plain_lax_cnn002(params), x.transpose(0, 3, 1, 2)
  # ncg_jax's forward as ncg_jax runs it (`Trained.logits_fn()`, `logits_and_features`) and as
  # ODIN's own programs get it: the variables as arguments. The row after it compiles them in
  # as constants, which XLA:CPU runs 3-7% faster on this network (and which can crash
  # XLA:CPU on others, `functional.constants_notice`); the plain Flax rows close over theirs,
  # forward and ODIN alike.
  own_fwd = functools.partial(_forward, own_fn)
  const_fwd = jax.jit(lambda xx: model.apply({"params": params}, xx)[0])
  plain_fwd = jax.jit(plain_fn)
  fns = {"forward (logits)": own_fwd, "forward, variables compiled in": const_fwd,
         "ODIN": lambda xx: detect.odin(own_fn, xx),
         # a validation search's pair (registry): both scores of each image, one gradient
         "ODIN at 2 epsilons (one gradient)": lambda xx: detect.odin(own_fn, xx,
                                                                     epsilon=(0.0014, 0.0028)),
         "plain Flax forward": plain_fwd,
         "plain Flax ODIN (logits_fn=lambda x: net.apply(v, x))": lambda xx: detect.odin(plain_fn, xx),
         "plain lax NCHW forward": jax.jit(lax_fn),
         "plain lax NCHW ODIN": lambda xx: detect.odin(lax_fn, xx)}
  inputs = {name: x_nchw if name.startswith("plain lax") else x for name in fns}
  flops = {name: model_flops(f, inputs[name]) for name, f in fns.items()}
  times = timeit_interleaved({name: functools.partial(f, inputs[name]) for name, f in fns.items()},
                             repeat=max(1, repeat // 2), rounds=4)
  return times, flops


def arch_odin_rows(archs: list[str], batch: int, repeat: int) -> list[tuple]:
  """ODIN through each architecture (10 classes, 32 x 32 x 3 inputs, random weights, eval
  mode) against its own forward, both through `Trained.logits_fn()`: (arch, forward s,
  ODIN s, forward FLOPs, ODIN FLOPs) per batch."""
  x = jnp.asarray(np.random.default_rng(0).random((batch, 32, 32, 3), dtype=np.float32))
  out = []
  for arch in archs:
    model = models.create(arch, 10)
    params, state = models.init(model, jax.random.key(0), x[:1])
    # the variables reach both programs as arguments (a `Partial`): compiled in as constants,
    # wrn_16_4's forward crashes XLA:CPU (jaxlib 0.10.2; `functional.constants_notice`)
    fn = Trained(model, params, state).logits_fn()
    t = timeit_interleaved({"forward": functools.partial(_forward, fn, x),
                            "ODIN": functools.partial(detect.odin, fn, x)},
                           repeat=max(1, repeat // 4), rounds=4, warmup=1)
    out.append((arch, t["forward"], t["ODIN"], model_flops(_forward, fn, x),
                model_flops(detect.odin, fn, x)))
  return out


def print_arch_odin(rows: list[tuple], batch: int):
  print(f"\nODIN through other ncg_jax architectures (32 x 32 x 3, random weights, batch {batch}):\n")
  print(row("architecture", "forward images/s", "ODIN images/s", "ODIN x forward", "FLOPs x forward"))
  print(row("---", "---", "---", "---", "---"))
  for arch, tf, to, ff, fo in rows:
    print(row(arch, f"{batch / tf:,.0f}", f"{batch / to:,.0f}", f"{to / tf:.1f}", f"{fo / ff:.2f}"))


def odin_search_times(n: int, rounds: int = 2) -> tuple[float, float, bool]:
  """ODIN's validation search (its 8-point grid) through CNN002 on n ID and n OOD validation
  images (random uint8): seconds with the grid scored one point at a time (`Detector.score`,
  what `aps.search` did before `score_grid`) and through `score_points` (one gradient per
  temperature), medians of alternating rounds; and whether the scores are bitwise equal."""
  from ncg_jax.detect import aps, registry
  model, params = cnn002(9)
  rng = np.random.default_rng(0)
  images = lambda: rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
  m = registry.Model(Trained(model, params, {}), images()[:100], np.arange(100) % 9, 9)
  sets = [registry.Inputs(m, images()), registry.Inputs(m, images())]
  det = registry.DETECTORS.get("odin")
  points = aps.grid_points(det.grid(m))
  ways = {"one point at a time": lambda s: [det.score(m, s, hp) for hp in points],
          "score_points": lambda s: det.score_points(m, s, points)}
  same = all(np.array_equal(a, b) for a, b in zip(*(f(sets[0]) for f in ways.values())))
  times = {name: [] for name in ways}
  for _ in range(rounds):
    for name, f in ways.items():
      t0 = time.perf_counter()
      for s in sets:
        f(s)
      times[name].append(time.perf_counter() - t0)
  return (*(float(np.median(times[name])) for name in ways), same)


def jax_rows(batch: int, repeat: int):
  k = 9
  model, params = cnn002(k)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((batch, 28, 28, 1), dtype=np.float32))
  train_x = jnp.asarray(rng.random((1000, 28, 28, 1), dtype=np.float32))
  fwd = jax.jit(lambda x: model.apply({"params": params}, x))
  _, train_h = fwd(train_x)
  train_y = np.arange(len(train_x)) % k  # every class present (random weights predict few)
  head = params["head"]
  maha = detect.fit_mahalanobis(np.asarray(train_h), train_y, k)
  bank = detect.fit_knn(np.asarray(train_h))
  thr = detect.react_threshold(np.asarray(train_h))
  vim_stats = detect.fit_vim(np.asarray(train_h), head, 100)
  layers = ("block1", "block2", "features")
  nac_params = {l: {"alpha": 1.0, "M": 50, "O": 5} for l in layers}
  tables = nac.fit(nac.pooled_states(model, {"params": params}, train_x, layers), nac_params)

  def with_fwd(op):
    f = jax.jit(lambda x: op(*fwd(x)))
    return lambda: f(x)

  work = {
      "forward (logits)": lambda: fwd(x),
      "MSP": with_fwd(lambda z, h: detect.msp(z)),
      "Energy": with_fwd(lambda z, h: detect.energy(z)),
      "GradNorm (closed form)": with_fwd(lambda z, h: detect.gradnorm_linear(head, h, include_bias=False)),
      "GradNorm (autodiff, vmap)": with_fwd(lambda z, h: detect.gradnorm(detect.linear_head, head, h)),
      "Mahalanobis": with_fwd(lambda z, h: detect.mahalanobis(maha, h)),
      "ReAct": with_fwd(lambda z, h: detect.react(detect.linear_head, head, h, thr)),
      "ViM": with_fwd(lambda z, h: detect.vim(vim_stats, detect.linear_head, head, h)),
      "ASH": with_fwd(lambda z, h: detect.ash(detect.linear_head, head, h, 90)),
      "KNN (k=50, 1000-image bank)": lambda: detect.knn(bank, np.asarray(fwd(x)[1]), k=50),
      "NAC-UE (3 layers)": lambda: nac.score(tables, nac.pooled_states(model, {"params": params}, x, layers)),
  }
  return {name: timeit(f, repeat=repeat) for name, f in work.items()}, params


def torch_rows(params, batch: int, loop_images: int, repeat: int):
  import torch
  net = torch_cnn002(params, 9).eval()
  rng = np.random.default_rng(0)
  x = torch.from_numpy(rng.random((batch, 1, 28, 28), dtype=np.float32))
  T, eps = 1000.0, 0.0014
  # the same network and batch channels-last, PyTorch's faster CPU layout for convolutions
  net_cl = torch_cnn002(params, 9).eval().to(memory_format=torch.channels_last)
  x_cl = x.contiguous(memory_format=torch.channels_last)

  def features(xx):  # penultimate features of the torch CNN002
    r = torch.relu
    h = torch.nn.functional.max_pool2d(r(net.c2(r(net.c1(xx)))), 2)
    h = torch.nn.functional.max_pool2d(r(net.c4(r(net.c3(h)))), 2)
    h = h.permute(0, 2, 3, 1).reshape(h.shape[0], -1)
    return r(net.f2(r(net.f1(h))))

  def odin_batch(xx, net=net):
    xx = xx.clone().requires_grad_(True)
    out = net(xx)
    loss = torch.nn.functional.cross_entropy(out / T, out.argmax(1))
    loss.backward()
    g = (torch.ge(xx.grad, 0).float() - 0.5) * 2
    with torch.no_grad():
      return torch.softmax(net(xx - eps * g) / T, 1).max(1).values

  def odin_loop():
    return [odin_batch(x[i:i + 1]) for i in range(loop_images)]

  def gradnorm_original():
    out = []
    for i in range(loop_images):
      net.zero_grad()
      logits = net(x[i:i + 1])
      loss = torch.mean(torch.sum(-torch.log_softmax(logits, 1), 1))
      loss.backward()
      out.append(net.head.weight.grad.abs().sum().item())
    return out

  def gradnorm_openood():
    with torch.no_grad():
      h = features(x)
    fc = torch.nn.Linear(200, 9)
    fc.load_state_dict(net.head.state_dict())
    out = []
    for hi in h:
      fc.zero_grad()
      loss = torch.mean(torch.sum(-torch.log_softmax(fc(hi[None]), 1), 1))
      loss.backward()
      out.append(fc.weight.grad.abs().sum().cpu().numpy())
    return out

  def forward(net=net, x=x):
    with torch.no_grad():
      return net(x)

  per_image = lambda f: timeit(f, repeat=max(2, repeat // 2), warmup=1) / loop_images
  per_batch = lambda f: timeit(f, repeat=repeat, warmup=1) / batch
  return {
      "forward (logits)": per_batch(forward),
      "forward (logits), channels-last": per_batch(lambda: forward(net_cl, x_cl)),
      "ODIN, original loop (batch 1)": per_image(odin_loop),
      "ODIN, OpenOOD batched": per_batch(lambda: odin_batch(x)),
      "ODIN, OpenOOD batched, channels-last": per_batch(lambda: odin_batch(x_cl, net_cl)),
      "GradNorm, original loop (batch 1, full backward)": per_image(gradnorm_original),
      "GradNorm, OpenOOD per-sample FC": per_batch(gradnorm_openood),
  }


def print_odin(t: dict, flops: dict, batch: int, label: str):
  """The "FLOPs x forward" column is what "x its network's forward" would be if ODIN's
  programs ran at the forward's FLOP rate: ODIN's floor (a forward, its input VJP, a
  forward: 3x)."""
  print(row("detector", "images/s", "x its network's forward", "FLOPs x forward"))
  print(row("---", "---", "---", "---"))
  for name in t:
    fwd = ("plain Flax forward" if name.startswith("plain Flax") else
           "plain lax NCHW forward" if name.startswith("plain lax") else "forward (logits)")
    print(row(f"{label} {name}", f"{batch / t[name]:,.0f}", f"{t[name] / t[fwd]:.2f}",
              f"{flops[name] / flops[fwd]:.2f}"))
  print(f"\n{label} ODIN x the forward with its variables compiled in: "
        f"{t['ODIN'] / t['forward, variables compiled in']:.2f}")


def print_search(search, n: int):
  if search is None:
    return
  one, grouped, same = search
  print(f"\nODIN's validation search (8 points, CNN002, {n:,} ID + {n:,} OOD images): "
        f"{one:.2f} s one point at a time, {grouped:.2f} s with one gradient per temperature "
        f"({one / grouped:.2f}x); scores {'bitwise equal' if same else 'DIFFER'}")


def main():
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--batch", type=int, default=256)
  ap.add_argument("--loop_images", type=int, default=64)
  ap.add_argument("--repeat", type=int, default=10)
  ap.add_argument("--threads", type=int, default=2)
  ap.add_argument("--odin_only", action="store_true", help="print the ODIN table only")
  ap.add_argument("--no_defaults_run", action="store_true",
                  help="skip the second process with XLA's CPU defaults")
  ap.add_argument("--archs", default="wrn_16_4,resnet18,densenet_bc_40_12",
                  help="other architectures to time ODIN through ('' for none)")
  ap.add_argument("--arch_batch", type=int, default=64)
  ap.add_argument("--search_images", type=int, default=1000,
                  help="ID and OOD validation images of the ODIN search timing (0: skip it)")
  args = ap.parse_args()
  b = args.batch
  to, odin_flops = odin_rows(b, args.repeat)
  archs = [a for a in args.archs.split(",") if a]
  arch_rows = arch_odin_rows(archs, args.arch_batch, args.repeat) if archs else []
  search = odin_search_times(args.search_images) if args.search_images else None
  if args.odin_only:
    print(f"{setting()}\n")
    print_odin(to, odin_flops, b, "ncg_jax")
    if arch_rows:
      print_arch_odin(arch_rows, args.arch_batch)
    print_search(search, args.search_images)
    return
  import torch
  torch.set_num_threads(args.threads)
  tj, params = jax_rows(b, args.repeat)
  tt = torch_rows(params, b, args.loop_images, args.repeat)
  fwd = to["forward (logits)"] / b
  print(f"\nCNN002, batch {b}, jax {jax.__version__} ({jax.default_backend()}), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)\n{setting()}\n")
  print_odin(to, odin_flops, b, "ncg_jax")
  if arch_rows:
    print_arch_odin(arch_rows, args.arch_batch)
  print_search(search, args.search_images)
  print()
  print(row("detector", "images/s", "x ncg_jax forward"))
  print(row("---", "---", "---"))
  for name, t in tj.items():
    print(row(f"ncg_jax {name}", f"{b / t:,.0f}", f"{t / b / fwd:.1f}"))
  for name, t in tt.items():
    print(row(f"PyTorch {name}", f"{1 / t:,.0f}", f"{t / fwd:.1f}"))
  if not args.no_defaults_run:
    print("\nThe same ODIN table with XLA's CPU defaults (NCG_JAX_KEEP_XLA_DEFAULTS=1: what a "
          "notebook gets when JAX ran before `import ncg_jax`):", flush=True)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if xla_cpu.USER_XLA_FLAGS is not None:
      env["XLA_FLAGS"] = xla_cpu.USER_XLA_FLAGS
    subprocess.run([sys.executable, "-m", "benchmarks.detect", "--odin_only", f"--batch={b}",
                    f"--repeat={args.repeat}", "--archs=", "--search_images=0"], check=True,
                   env={**env, "NCG_JAX_KEEP_XLA_DEFAULTS": "1"})


if __name__ == "__main__":
  main()
