"""CNN002's four convolutions one at a time: the forward, input-gradient and weight-gradient
convolutions that ncg_jax's gradient programs run on the CPU (`models.layers.conv2d`'s forward
under differentiation and its two backward convolutions), against PyTorch's channels-last
(oneDNN) convolution and `aten.convolution_backward` on the same arrays.

`benchmarks/cnn002.py` times whole programs; this table says which convolutions its gradient
ratios lose in, as time, GFLOP/s and fraction of the matmul rate timed in the same rounds. Run
it under `taskset -c 0` with `--threads 1` for one core: a convolution whose time barely
changes there gains nothing from the second core (`RESULTS.md`).

python -m benchmarks.conv_layers [--batch 128] [--threads 2] [--repeat 10]
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import MatmulReference, model_flops, row, setting, timeit_interleaved
from ncg_jax.models import layers

# CNN002 on 28 x 28 x 1 images: (input height = width, input channels, output channels)
CNN002_CONVS = {"conv1": (28, 1, 32), "conv2": (26, 32, 32), "conv3": (12, 32, 64),
                "conv4": (10, 64, 64)}
PASSES = ("forward", "input gradient", "weight gradient")


def jax_passes(x, w, dy) -> dict:
  """ncg_jax's three convolutions of one layer as jitted zero-argument callables."""
  fwd = jax.jit(lambda x, w: layers._conv2d_fwd(x, w, "VALID")[0])
  dgrad = jax.jit(lambda dy, w: layers._input_gradient(dy, w, "VALID"))
  wgrad = jax.jit(lambda x, dy: layers._weight_gradient(x, dy, w, "VALID"))
  return {"forward": lambda: fwd(x, w), "input gradient": lambda: dgrad(dy, w),
          "weight gradient": lambda: wgrad(x, dy)}


def torch_passes(x, w, dy) -> dict:
  """PyTorch's three convolutions of one layer on channels-last copies of the same arrays."""
  import torch
  cl = torch.channels_last
  xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).contiguous(memory_format=cl)
  wt = torch.from_numpy(np.asarray(w).transpose(3, 2, 0, 1).copy()).contiguous(memory_format=cl)
  dyt = torch.from_numpy(np.asarray(dy).transpose(0, 3, 1, 2).copy()).contiguous(memory_format=cl)
  back = lambda mask: torch.ops.aten.convolution_backward(
      dyt, xt, wt, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, mask)
  # nothing requires grad, so no autograd graph is recorded
  return {"forward": lambda: torch.nn.functional.conv2d(xt, wt),
          "input gradient": lambda: back([True, False, False])[0],
          "weight gradient": lambda: back([False, True, False])[1]}


def layer_arrays(rng, batch: int, size: int, c_in: int, c_out: int):
  """Random NHWC input, HWIO kernel and output cotangent of one 3 x 3 'VALID' layer."""
  out = size - 2
  x = jnp.asarray(rng.standard_normal((batch, size, size, c_in), np.float32))
  w = jnp.asarray(rng.standard_normal((3, 3, c_in, c_out), np.float32) / (3 * c_in ** 0.5))
  dy = jnp.asarray(rng.standard_normal((batch, out, out, c_out), np.float32))
  return x, w, dy


def torch_result_as_nhwc(pass_name: str, t) -> np.ndarray:
  """A PyTorch result in ncg_jax's layout: a weight gradient OIHW -> HWIO, else NCHW -> NHWC."""
  a = t.detach().numpy()
  return a.transpose(2, 3, 1, 0) if pass_name == "weight gradient" else a.transpose(0, 2, 3, 1)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--threads", type=int, default=2)
  ap.add_argument("--repeat", type=int, default=10)
  ap.add_argument("--rounds", type=int, default=5)
  args = ap.parse_args()
  import torch
  torch.set_num_threads(args.threads)
  rng = np.random.default_rng(0)
  matmul = MatmulReference()
  print(f"CNN002's convolutions, batch {args.batch}, jax {jax.__version__} "
        f"({jax.default_backend()}), torch {torch.__version__} ({torch.get_num_threads()} "
        f"threads)\n{setting()}\n")
  print(row("layer", "pass", "ncg_jax ms", "PyTorch channels-last ms", "ncg_jax / PyTorch speed",
            "ncg_jax GFLOP/s", "x matmul rate", "max |difference| / max |value|"))
  print(row(*["---"] * 8))
  totals = {p: [0.0, 0.0] for p in PASSES}
  for name, (size, c_in, c_out) in CNN002_CONVS.items():
    x, w, dy = layer_arrays(rng, args.batch, size, c_in, c_out)
    # each of the three passes does the forward's multiply-adds
    flops = model_flops(lambda x, w: layers._conv(x, w, "VALID"), x, w)
    mine, theirs = jax_passes(x, w, dy), torch_passes(x, w, dy)
    for p in PASSES:
      ref = np.asarray(mine[p]())
      got = torch_result_as_nhwc(p, theirs[p]())
      diff = float(np.abs(ref - got).max() / np.abs(ref).max())
      t = timeit_interleaved({"jax": mine[p], "torch": theirs[p], "matmul": matmul},
                             repeat=args.repeat, rounds=args.rounds)
      totals[p][0] += t["jax"]
      totals[p][1] += t["torch"]
      print(row(name, p, f"{t['jax'] * 1e3:.2f}", f"{t['torch'] * 1e3:.2f}",
                f"{t['torch'] / t['jax']:.2f}", f"{flops / t['jax'] / 1e9:.0f}",
                f"{matmul.fraction(flops, t['jax'], t['matmul']):.2f}", f"{diff:.1e}"))
  for p in PASSES:
    print(row("all four", p, f"{totals[p][0] * 1e3:.2f}", f"{totals[p][1] * 1e3:.2f}",
              f"{totals[p][1] / totals[p][0]:.2f}", "", "", ""))


if __name__ == "__main__":
  main()
