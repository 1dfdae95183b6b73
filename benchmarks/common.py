"""Timing helpers shared by the benchmark scripts."""
import os
import time

from ncg_jax import xla_cpu

XLA_CPU_TUNED = xla_cpu.configure()

import jax  # noqa: E402


def setting() -> str:
  return (f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
          + ("" if XLA_CPU_TUNED else " (ncg_jax's CPU convolution setting not applied)"))


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


def row(*cells) -> str:
  return "| " + " | ".join(str(c) for c in cells) + " |"
