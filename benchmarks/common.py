"""Timing and FLOP-counting helpers shared by the benchmark scripts."""
import math
import os
import time

from ncg_jax import xla_cpu  # importing ncg_jax applies its XLA:CPU settings

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.extend  # noqa: E402
import numpy as np  # noqa: E402


class PlainCNN002(nn.Module):
  """CNN002 as a user would write it in plain Flax (no ncg_jax layers)."""
  num_classes: int = 9

  @nn.compact
  def __call__(self, x):
    for f in (32, 32):
      x = nn.relu(nn.Conv(f, (3, 3), padding="VALID")(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    for f in (64, 64):
      x = nn.relu(nn.Conv(f, (3, 3), padding="VALID")(x))
    x = nn.max_pool(x, (2, 2), (2, 2)).reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(200)(nn.relu(nn.Dense(200)(x))))
    return nn.Dense(self.num_classes)(x)


def plain_lax_cnn002(params):
  """CNN002 with ncg_jax's `params` as a user porting PyTorch code writes it in plain `lax`:
  NCHW activations and OIHW kernels (`lax.conv`'s defaults), `reduce_window` pooling; a
  function of NCHW images. Its logits equal ncg_jax's CNN002's (flattened as Flax does)."""
  import jax.numpy as jnp
  from jax import lax
  convs = [(jnp.asarray(np.asarray(params[n]["kernel"]).transpose(3, 2, 0, 1)),
            jnp.asarray(params[n]["bias"])) for n in ("conv1", "conv2", "conv3", "conv4")]
  dense = [(params[n]["kernel"], params[n]["bias"]) for n in ("fc1", "fc2", "head")]

  def net(x_nchw):
    h = x_nchw
    for i, (w, b) in enumerate(convs):
      h = jax.nn.relu(lax.conv(h, w, (1, 1), "VALID") + b[None, :, None, None])
      if i % 2:
        h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
    h = h.transpose(0, 2, 3, 1).reshape(h.shape[0], -1)
    for i, (w, b) in enumerate(dense):
      h = h @ w + b[None]
      h = jax.nn.relu(h) if i < 2 else h
    return h
  return net


def setting() -> str:
  state = xla_cpu.configure()
  cpu = xla_cpu.host_cpu()
  return (f"host CPU: {cpu['model']} ({cpu.get('vendor', '')} family {cpu.get('family', '')} "
          f"model {cpu.get('model_number', '')}, {cpu.get('vector', '')}, "
          f"{cpu.get('cpus', '')} CPUs)\n"
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; ncg_jax CPU settings: "
          + ", ".join(f"{k} {'on' if v else 'off'}" for k, v in state.items()))


def timeit(fn, *args, repeat: int = 10, warmup: int = 2) -> float:
  """Median seconds per call of fn(*args), after warm-up (compilation excluded)."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeat):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  times.sort()
  return times[len(times) // 2]


def timeit_interleaved(fns: dict, repeat: int = 10, rounds: int = 5, warmup: int = 2) -> dict:
  """Median seconds per call of each zero-argument function, measured in `rounds` alternating
  rounds of `repeat` calls each, so that a slow spell of a shared machine falls on every
  contender alike (a ratio of two functions is then steadier than from back-to-back runs)."""
  for fn in fns.values():
    for _ in range(warmup):
      jax.block_until_ready(fn())
  times = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times[name].append(time.perf_counter() - t0)
  return {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}


class TrainSteps:
  """A zero-argument callable for the timers: `chain` train steps back to back on one batch,
  returning the last step's metrics. The step donates its state, so the current one lives
  here (`.state`) from call to call."""

  def __init__(self, step, state, x, y, key, chain: int = 1):
    self.step, self.state, self.x, self.y, self.key, self.chain = step, state, x, y, key, chain

  def __call__(self):
    for _ in range(self.chain):
      self.state, metrics = self.step(self.state, self.x, self.y, self.key)
    return metrics


class MatmulReference:
  """A float32 n x n matmul through XLA, called with no arguments, to be timed beside a
  workload: the machine's attainable matrix rate at that moment (the shared VM's speed moves
  by up to ~2x between hours, so a rate from another moment says little)."""

  def __init__(self, n: int = 2048):
    self._a = jax.random.normal(jax.random.key(0), (n, n), np.float32)
    self._mm = jax.jit(lambda m: m @ m)
    self.flops = 2.0 * n ** 3

  def __call__(self):
    return self._mm(self._a)

  def fraction(self, flops: float, seconds: float, matmul_seconds: float) -> float:
    """A workload's FLOP rate as a fraction of this matmul's, both timed in the same rounds."""
    return (flops / seconds) / (self.flops / matmul_seconds)


def row(*cells) -> str:
  return "| " + " | ".join(str(c) for c in cells) + " |"


def model_flops(fn, *args) -> float:
  """The matrix FLOPs of `fn(*args)` counted on its jaxpr (before XLA, dead code removed):
  2 x the multiply-adds of every `dot_general` and `conv_general_dilated` (padding taps not
  counted, `_conv_flops`), forward and backward alike, with a `scan`'s
  body (a `fori_loop` of static length is one) counted once per iteration, a `cond`'s
  costliest branch, and a `while` loop's body once (its trip count is unknown). Elementwise
  work is not counted, as in the model-FLOPs convention of PaLM (Chowdhery et al. 2022, app.
  B). XLA's own cost analysis counts a loop's body once, which hid 9 of TRADES's 10 attack
  steps; and on GPU it does not see into cuDNN's convolutions at all."""
  # JAX's private dead-code elimination (benchmarks only), so unused outputs count as in XLA
  from jax._src.interpreters import partial_eval as pe
  jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
  return _jaxpr_flops(pe.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))[0])


def _sub_jaxprs(value):
  if isinstance(value, jax.extend.core.ClosedJaxpr):
    return [value.jaxpr]
  if isinstance(value, jax.extend.core.Jaxpr):
    return [value]
  if isinstance(value, (tuple, list)):
    return [j for v in value for j in _sub_jaxprs(v)]
  return []


def _conv_flops(eqn) -> float:
  """2 x the multiply-adds whose input is a real element, not padding or a hole of a
  dilated (transposed) input: a gradient's full correlation then counts what its forward
  convolution does."""
  lhs, rhs, out = (v.aval.shape for v in (*eqn.invars[:2], eqn.outvars[0]))
  p = eqn.params
  lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
  taps = 1
  for d in range(len(lhs_spec) - 2):
    n_in, k, n_out = lhs[lhs_spec[2 + d]], rhs[rhs_spec[2 + d]], out[out_spec[2 + d]]
    a, r, lo = p["lhs_dilation"][d], p["rhs_dilation"][d], p["padding"][d][0]
    pos = (np.arange(n_out)[:, None] * p["window_strides"][d] + np.arange(k)[None] * r - lo)
    taps *= int(np.sum((pos >= 0) & (pos <= (n_in - 1) * a) & (pos % a == 0)))
  return 2.0 * out[out_spec[0]] * out[out_spec[1]] * rhs[rhs_spec[1]] * taps


def _jaxpr_flops(jaxpr) -> float:
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)
    elif name == "conv_general_dilated":
      total += _conv_flops(eqn)
    elif name == "cond":
      total += max(_jaxpr_flops(b.jaxpr) for b in eqn.params["branches"])
    else:
      inner = sum(_jaxpr_flops(j) for v in eqn.params.values() for j in _sub_jaxprs(v))
      total += inner * (eqn.params["length"] if name == "scan" else 1)
  return total
