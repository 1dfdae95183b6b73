"""Progress lines of long loops: silent when short, rate and time left when long, and
`map_batches` reports under its label."""
import io

import numpy as np

from ncg_jax import batching
from ncg_jax.progress import Progress


def test_short_loops_are_silent_and_long_ones_report_rate_and_time_left():
  out = io.StringIO()
  p = Progress("quick", 10, stream=out)
  for _ in range(10):
    p.update(1)
  p.close()
  assert out.getvalue() == ""

  out = io.StringIO()
  p = Progress("search", 4, "queries", every_s=0.0, quiet_s=0.0, stream=out)
  synced = []
  for _ in range(4):
    p.update(1, sync=lambda: synced.append(1))
  p.close()
  lines = out.getvalue().splitlines()
  assert lines[0].startswith("search: 1/4 queries (25%), ") and lines[0].endswith("s left")
  assert len(lines) == 4 and lines[-1].startswith("search: 4 queries in ")  # 3 updates + total
  assert len(synced) == 3  # waited for the dispatched work before each rate


def test_map_batches_reports_under_its_label(monkeypatch, capsys):
  monkeypatch.setattr(batching, "Progress",
                      lambda label, total, unit: Progress(label, total, unit, every_s=0.0, quiet_s=0.0))
  out = batching.map_batches(lambda xb: xb * 2, np.arange(10.0)[:, None], batch_size=4,
                             label="doubling")
  np.testing.assert_array_equal(out[:, 0], 2 * np.arange(10.0))
  err = capsys.readouterr().err.splitlines()
  assert err[0].startswith("doubling: 4/10 rows") and err[-1].startswith("doubling: 10 rows in")


def test_map_batches_fit_last_pads_the_last_batch_to_a_multiple_of_8_only():
  shapes = []

  def fn(xb, yb, mask):
    shapes.append(xb.shape[0])
    return xb[:, 0] + yb, mask

  x, y = np.arange(45.0)[:, None], np.arange(45.0) * 10
  for fit_last, expected in ((False, [16, 16, 16]), (True, [16, 16, 16])):
    shapes.clear()
    out, mask = batching.map_batches(fn, x, y, batch_size=16, with_mask=True, fit_last=fit_last)
    np.testing.assert_array_equal(out, 11 * np.arange(45.0))
    assert mask.all() and shapes == expected
  shapes.clear()
  out, _ = batching.map_batches(fn, x[:37], y[:37], batch_size=16, with_mask=True, fit_last=True)
  np.testing.assert_array_equal(out, 11 * np.arange(37.0))
  assert shapes == [16, 16, 8]  # 5 rows left: padded to 8, not 16
