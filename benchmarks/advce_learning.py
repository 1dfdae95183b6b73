"""Does PGD adversarial training (`advce`) leave chance as the NCG paper's code does?

python -m benchmarks.advce_learning [--epochs 30] [--copies 1] [--init flax,torch] [--no_torch]
    [--project_first] [--dataset mnistwo9 --n 3584]

Trains CNN002 with PGD-AT on digits without the 9s (1,294 images; `--copies 3` adds two copies
shifted by one pixel, 3,882 images, MNIST-subset-sized) with the paper's recipe (SGD lr 0.01,
momentum 0.9, batch 128, L2 eps 2, 10 steps of 0.4, eval-mode attack), in ncg_jax and in a
PyTorch twin of the paper code's recipe (`lolip`: PyTorch's default Linear initialisation,
Kaiming-normal convolutions with zero bias, a zero-initialised last layer; a uniform start in
the eps-box projected onto the ball; step -> clip -> project -> clip), on the same batches.
Prints, per epoch, each one's training loss and accuracy (on the adversarial examples), the
first epoch whose training loss falls below 0.9 ln(9) (left the chance plateau), and the
final clean test accuracy.
"""
import argparse
import time

import numpy as np

from benchmarks.common import row
from ncg_jax import data, models
from ncg_jax.batching import train_batches
from ncg_jax.train import losses
from ncg_jax.train.trainer import TrainConfig, train


def dataset(copies: int, name: str = "digitswo9", n: int | None = None):
  ds = data.load(name)
  xs, ys = [ds.train.x[:n]], [ds.train.y[:n]]
  for shift in [(1, 0), (0, 1), (-1, 0), (0, -1)][:copies - 1]:
    xs.append(np.roll(ds.train.x[:n], shift, axis=(1, 2)))
    ys.append(ds.train.y[:n])
  return data.Split(np.concatenate(xs), np.concatenate(ys)), ds.test


def torch_run(split, test, epochs, eps=2.0, steps=10, lr=0.01, seed=0):
  import torch
  import torch.nn.functional as F
  from tests.torch_twins import CNN002
  torch.manual_seed(seed)
  net = CNN002(9)
  for m in net.feature_extractor:
    if isinstance(m, torch.nn.Conv2d):
      torch.nn.init.kaiming_normal_(m.weight)
      torch.nn.init.zeros_(m.bias)
  torch.nn.init.zeros_(net.classifier.fc3.weight)
  torch.nn.init.zeros_(net.classifier.fc3.bias)
  opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
  x_all = torch.from_numpy(split.x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
  y_all = torch.from_numpy(split.y.astype(np.int64))
  xt = torch.from_numpy(test.x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
  clip_eta = lambda e: e * torch.clamp(eps / e.flatten(1).norm(dim=1).clamp_min(1e-12), max=1.0).view(-1, 1, 1, 1)
  out = []
  for epoch in range(epochs):
    tot, acc = [], []
    for idx in train_batches(len(split), 128, seed, epoch):
      x, y = x_all[idx], y_all[idx]
      net.eval()
      x_adv = torch.clamp(x + clip_eta(torch.empty_like(x).uniform_(-eps, eps)), 0, 1)
      for _ in range(steps):
        x_adv.requires_grad_(True)
        g, = torch.autograd.grad(F.cross_entropy(net(x_adv)[0], y), x_adv)
        g = g / torch.sqrt(torch.clamp((g ** 2).flatten(1).sum(1), min=1e-12)).view(-1, 1, 1, 1)
        x_adv = torch.clamp(x_adv.detach() + 2 * eps / steps * g, 0, 1)
        x_adv = torch.clamp(x + clip_eta(x_adv - x), 0, 1)
      net.train()
      logits = net(x_adv)[0]
      loss = F.cross_entropy(logits, y)
      opt.zero_grad()
      loss.backward()
      opt.step()
      tot.append(loss.item())
      acc.append(float((logits.argmax(1) == y).float().mean()))
    out.append((float(np.mean(tot)), float(np.mean(acc))))
  net.eval()
  with torch.no_grad():
    test_acc = float((net(xt)[0].argmax(1).numpy() == test.y).mean())
  return out, test_acc


def jax_run(split, test, epochs, init: str, workdir: str, seed=0):
  model = models.create("cnn002", 9, torch_init=(init == "torch"))
  cfg = TrainConfig(loss="advce", optimizer="sgd", lr=0.01, momentum=0.9, batch_size=128,
                    epochs=epochs, milestones=(10 ** 6,), seed=seed)
  lines = []
  trained = train(model, split, cfg, workdir, attack=losses.AttackConfig(eps=2.0, steps=10),
                  log=lines.append)
  logits, _ = models.logits_and_features(trained, test.x)
  per_epoch = [(float(l.split("loss")[1].split()[0]), float(l.split("acc")[1].split()[0]))
               for l in lines if "epoch" in l]
  return per_epoch, float((logits.argmax(1) == test.y).mean())


def _project_first():
  """Replaces the inner step by the old order: step, project, clip."""
  from jax import lax
  import sys
  pgd_lib = sys.modules["ncg_jax.attacks.pgd"]
  import jax
  import jax.numpy as jnp

  def ascend(objective, x, x_start, *, eps, norm, steps, step_size, clip=(0.0, 1.0), key=None):
    grad = jax.grad(lambda xa: jnp.sum(objective(xa)))

    def body(_, x_adv):
      x_adv = x_adv + step_size * pgd_lib.steepest_step(grad(x_adv), norm)
      return pgd_lib._clip(x + pgd_lib.project(x_adv - x, eps, norm), clip)
    return lax.fori_loop(0, steps, body, x_start)
  losses.ascend = ascend


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--epochs", type=int, default=30)
  ap.add_argument("--copies", type=int, default=1)
  ap.add_argument("--dataset", default="digitswo9",
                  help="any 9-class ncg_jax dataset, e.g. mnistwo9 once prepared")
  ap.add_argument("--n", type=int, default=None, help="first n training images (e.g. 3584)")
  ap.add_argument("--init", default="flax,torch")
  ap.add_argument("--no_torch", action="store_true")
  ap.add_argument("--project_first", action="store_true",
                  help="ncg_jax's inner step as it was before #14: project onto the ball, then "
                       "clip to the box (the comparison that locates the cause)")
  args = ap.parse_args()
  if args.project_first:
    _project_first()
  import tempfile
  split, test = dataset(args.copies, args.dataset, args.n)
  chance = np.bincount(test.y).max() / len(test.y)
  print(f"advce on {len(split)} training images, {len(test.y)} test, chance {chance:.3f}")
  runs = {}
  for init in args.init.split(","):
    t0 = time.perf_counter()
    runs[f"ncg_jax ({init} init)"] = jax_run(split, test, args.epochs, init, tempfile.mkdtemp())
    print(f"ncg_jax {init} init: {time.perf_counter() - t0:.0f}s")
  if not args.no_torch:
    t0 = time.perf_counter()
    runs["PyTorch (lolip recipe)"] = torch_run(split, test, args.epochs)
    print(f"PyTorch: {time.perf_counter() - t0:.0f}s")
  names = list(runs)
  print(row("epoch", *[f"{n}: train loss / acc" for n in names]))
  print(row(*["---"] * (len(names) + 1)))
  for e in range(args.epochs):
    print(row(e + 1, *[f"{runs[n][0][e][0]:.3f} / {runs[n][0][e][1]:.3f}" for n in names]))
  plateau = 0.9 * np.log(9)
  for n in names:
    left = [e + 1 for e, (loss, _) in enumerate(runs[n][0]) if loss < plateau]
    print(f"{n}: leaves the plateau (train loss < 0.9 ln 9) at epoch "
          f"{left[0] if left else 'never'}; clean test accuracy {runs[n][1]:.3f}")


if __name__ == "__main__":
  main()
