"""Forward images/s of imported ImageNet classifiers beside PyTorch with the same weights.

python -m benchmarks.pretrained [--models vit_b_16,bit_s_r101x1,resnet50] [--batch 4] [--repeat 3]
                                [--precision float32|bfloat16]

For each architecture a PyTorch twin with random weights (`tests/torch_twins.py`, the keys of
torchvision's ViT-B/16 and ResNet-50 and of BiT's PyTorch port) is imported with
`ncg_jax.models.import_weights`, and both run eval-mode logits of the same 224x224 batch:
ncg_jax jit-compiled (uint8 -> [0, 1] inside), PyTorch under `inference_mode` (bfloat16
autocast with --precision=bfloat16) in two memory formats, as written (NCHW) and
channels-last, and ncg_jax's ratio against the faster. Also prints the largest logit
difference, a check that the two run the same network.
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import row, setting, timeit
from ncg_jax.models import import_weights, to_input


def twin(name: str):
  from tests import torch_twins as tw
  if name == "vit_b_16":
    return tw.ViT(224, 16, 768, 12, 12, 3072, 1000), "torchvision"
  if name == "bit_s_r101x1":
    return tw.ResNetV2((3, 4, 23, 3), 64, 1000), "bit"
  if name == "resnet50":
    return tw.TvResNet(tw.TvBottleneck, (3, 4, 6, 3), 1000), "torchvision"
  raise SystemExit(f"unknown model {name}; choose vit_b_16, bit_s_r101x1 or resnet50")


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--models", default="vit_b_16,bit_s_r101x1,resnet50")
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--repeat", type=int, default=3)
  ap.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
  args = ap.parse_args()
  import torch
  from tests import torch_twins as tw

  print(f"{jax.devices()[0].device_kind} ({jax.default_backend()}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), batch {args.batch}, {args.precision}; {setting()}")
  print(row("model", "input", "ncg_jax img/s", "PyTorch NCHW img/s",
            "PyTorch channels-last img/s", "ncg_jax / best PyTorch", "max |logit diff|"))
  print(row(*["---"] * 7))
  dtype = jnp.dtype(args.precision)
  for name in args.models.split(","):
    net, source = twin(name)
    net = tw.randomize(net, head_scale=0.1)
    ckpt = {k: v.numpy() for k, v in net.state_dict().items()}
    trained = import_weights(name, "", source=source, ckpt=ckpt, fields={"dtype": dtype})
    x8 = np.random.default_rng(0).integers(0, 256, (args.batch, 224, 224, 3), dtype=np.uint8)
    fwd = jax.jit(lambda v, x: trained.model.apply(v, to_input(x), train=False)[0])
    variables, x = trained.variables(), jnp.asarray(x8)
    t_jax = timeit(fwd, variables, x, repeat=args.repeat, warmup=1)
    xt = torch.from_numpy(x8.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    if torch.cuda.is_available():
      net.cuda()
      xt = xt.cuda()

    def torch_fwd(xx):
      with torch.inference_mode(), torch.autocast("cpu" if not torch.cuda.is_available() else "cuda",
                                                  dtype=torch.bfloat16,
                                                  enabled=args.precision == "bfloat16"):
        return net(xx)[0].float()
    diff = float(np.max(np.abs(np.asarray(fwd(variables, x)) - torch_fwd(xt).cpu().numpy())))
    t_torch = []
    for fmt in (torch.contiguous_format, torch.channels_last):
      net.to(memory_format=fmt)
      xf = xt.contiguous(memory_format=fmt)
      t_torch.append(timeit(torch_fwd, xf, repeat=args.repeat, warmup=1))
    print(row(name, "224x224x3", f"{args.batch / t_jax:,.1f}",
              *(f"{args.batch / t:,.1f}" for t in t_torch), f"{min(t_torch) / t_jax:.2f}",
              f"{diff:.1e}"))


if __name__ == "__main__":
  main()
