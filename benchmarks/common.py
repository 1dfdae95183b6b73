"""Timing helpers shared by the benchmark scripts."""
import os
import time

from ncg_jax import xla_cpu  # importing ncg_jax applies its XLA:CPU settings

import jax  # noqa: E402


def setting() -> str:
  state = xla_cpu.configure()
  return (f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; ncg_jax CPU settings: "
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


def row(*cells) -> str:
  return "| " + " | ".join(str(c) for c in cells) + " |"
