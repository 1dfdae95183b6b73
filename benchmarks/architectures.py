"""Forward and train-step images/s of every architecture at its dataset's resolution.

python -m benchmarks.architectures [--models cnn002,resnet18,...] [--batch 128]
                                   [--precision float32|bfloat16] [--torch]

Forward: eval-mode logits of a uint8 batch (the conversion to [0, 1] included). Train step:
one jit-compiled cross-entropy SGD step (forward, backward, update, BatchNorm statistics),
state donated. With --torch, torchvision's ResNets run the same batch beside them
(resnet18 as OpenOOD's 32x32 variant: 3x3 stride-1 stem, no max-pool), channels-last, cuDNN
autotuning on, bfloat16 autocast with --precision=bfloat16.
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.common import TrainSteps, row, setting, timeit
from ncg_jax import models
from ncg_jax.train import losses
from ncg_jax.models import to_input
from ncg_jax.train.trainer import make_train_step

# architecture -> (input shape, classes) of its dataset
SETTINGS = {
    "cnn002": ((28, 28, 1), 9),           # MNIST-wo
    "wrn_40_10": ((32, 32, 3), 9),        # CIFAR-10-wo
    "resnet18": ((32, 32, 3), 10),        # CIFAR-10 (OpenOOD)
    "densenet_bc_100_12": ((32, 32, 3), 10),  # CIFAR-10 (ODIN)
    "resnet50": ((112, 112, 3), 99),      # ImgNet100-wo
}


def jax_rates(name: str, batch: int, precision: str, repeat: int) -> tuple[float, float]:
  shape, k = SETTINGS[name]
  model = models.create(name, k, dtype=jnp.dtype(precision))
  params, state = models.init(model, jax.random.key(0), jnp.zeros((1, *shape)))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.integers(0, 256, (batch, *shape), dtype=np.uint8))
  y = jnp.asarray(rng.integers(0, k, batch))
  variables = {"params": params, **state}
  forward = jax.jit(lambda v, x: model.apply(v, to_input(x), train=False)[0])
  t_fwd = timeit(forward, variables, x, repeat=repeat)
  tx = optax.sgd(0.01, momentum=0.9)
  step = make_train_step(model, losses.make_loss("ce"), tx)
  s = {"params": params, "model_state": state, "opt": tx.init(params)}
  run = TrainSteps(step, s, x, y, jax.random.key(0))
  return batch / t_fwd, batch / timeit(run, repeat=repeat)


def torch_rates(name: str, batch: int, precision: str, repeat: int):
  try:
    import torch
    import torchvision
  except ImportError:
    return None
  if name not in ("resnet18", "resnet50"):
    return None
  shape, k = SETTINGS[name]
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  torch.backends.cudnn.benchmark = True
  net = getattr(torchvision.models, name)(num_classes=k)
  if name == "resnet18":  # OpenOOD's ResNet18_32x32
    net.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    net.maxpool = torch.nn.Identity()
  net = net.to(dev).to(memory_format=torch.channels_last)
  opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
  x = torch.rand(batch, shape[2], *shape[:2], device=dev).to(memory_format=torch.channels_last)
  y = torch.randint(0, k, (batch,), device=dev)
  amp = torch.autocast(dev, dtype=torch.bfloat16, enabled=precision == "bfloat16")
  sync = (lambda: torch.cuda.synchronize()) if dev == "cuda" else (lambda: None)

  def fwd():
    net.eval()
    with torch.no_grad(), amp:
      net(x)
    sync()

  def train():
    net.train()
    opt.zero_grad()
    with amp:
      loss = torch.nn.functional.cross_entropy(net(x).float(), y)
    loss.backward()
    opt.step()
    sync()
  return batch / timeit(fwd, repeat=repeat, warmup=3), batch / timeit(train, repeat=repeat, warmup=3)


def main():
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--models", default=",".join(SETTINGS))
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
  ap.add_argument("--repeat", type=int, default=10)
  ap.add_argument("--torch", action="store_true")
  args = ap.parse_args()
  print(f"batch {args.batch}, {args.precision}, {jax.devices()[0].device_kind}, "
        f"jax {jax.__version__}\n{setting()}\n")
  print(row("model", "input", "forward img/s", "train step img/s",
            "PyTorch forward", "PyTorch train", "train ncg_jax / PyTorch"))
  print(row(*["---"] * 7))
  for name in args.models.split(","):
    fwd, trn = jax_rates(name, args.batch, args.precision, args.repeat)
    t = torch_rates(name, args.batch, args.precision, args.repeat) if args.torch else None
    print(row(name, "x".join(map(str, SETTINGS[name][0])), f"{fwd:,.0f}", f"{trn:,.0f}",
              f"{t[0]:,.0f}" if t else "-", f"{t[1]:,.0f}" if t else "-",
              f"{trn / t[1]:.2f}" if t else "-"), flush=True)


if __name__ == "__main__":
  main()
