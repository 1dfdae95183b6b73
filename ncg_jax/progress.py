"""Progress of long loops (feature extraction, attacks, detectors, nearest-neighbour search) as
lines on stderr from process 0: a loop that ends within `quiet_s` prints nothing, a longer one
prints at most one line every `every_s` seconds with its rate and the time left, and a final
line with its total time."""
import sys
import time

import jax


class Progress:
  def __init__(self, label: str, total: int, unit: str = "images", every_s: float = 10.0,
               quiet_s: float = 10.0, stream=None):
    self.label, self.total, self.unit = label, total, unit
    self.every_s, self.quiet_s = every_s, quiet_s
    self.stream = stream if stream is not None else sys.stderr
    self.done = 0
    self.t0 = self.last = time.perf_counter()
    self.printed = False

  def _print(self, text: str) -> None:
    if jax.process_index() == 0:
      print(f"{self.label}: {text}", file=self.stream, flush=True)
    self.printed = True

  def update(self, n: int, sync=None) -> None:
    """`n` more units done (dispatched). `sync()`, called only when a line is due, waits for
    the work counted so far (JAX dispatches asynchronously)."""
    self.done += n
    now = time.perf_counter()
    if now - self.t0 < self.quiet_s or now - self.last < self.every_s or self.done >= self.total:
      return
    if sync is not None:
      sync()
      now = time.perf_counter()
    self.last = now
    rate = self.done / (now - self.t0)
    left = (self.total - self.done) / rate if rate > 0 else float("inf")
    self._print(f"{self.done:,}/{self.total:,} {self.unit} ({100 * self.done / self.total:.0f}%), "
                f"{rate:,.0f} {self.unit}/s, ~{left:.0f}s left")

  def close(self, sync=None) -> None:
    if sync is not None and time.perf_counter() - self.t0 >= self.quiet_s:
      sync()
    elapsed = time.perf_counter() - self.t0
    if self.printed or elapsed >= self.quiet_s:
      self._print(f"{self.done:,} {self.unit} in {elapsed:.0f}s")
