"""One program on 1 and on 4 fake CPU devices gives the same results (float tolerance)."""
import os
import subprocess
import sys

import numpy as np
import pytest


def run_on(devices: int, tmp_path) -> dict:
  out = tmp_path / f"d{devices}.npz"
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  root = os.path.dirname(os.path.dirname(__file__))
  p = subprocess.run([sys.executable, os.path.join(root, "tests", "sharded_run.py"), str(out),
                      str(tmp_path / f"run{devices}")], env=env, capture_output=True, text=True,
                     timeout=600, cwd=root)
  assert p.returncode == 0, p.stderr[-3000:]
  return dict(np.load(out))


@pytest.mark.slow
def test_training_attack_detector_and_neighbours_agree_across_device_counts(tmp_path):
  one, four = run_on(1, tmp_path), run_on(4, tmp_path)
  assert one["devices"] == 1 and four["devices"] == 4
  params = [k for k in one if k not in ("devices", "adv", "ok", "odin", "nn")]
  assert len(params) == 14  # every kernel and bias of CNN002
  for k in params:  # reductions over a split batch change float rounding only
    np.testing.assert_allclose(four[k], one[k], rtol=2e-4, atol=2e-5, err_msg=k)
  assert any(np.abs(one[k]).max() > 0 for k in params)
  np.testing.assert_array_equal(four["ok"], one["ok"])
  np.testing.assert_allclose(four["adv"], one["adv"], atol=2e-3)
  np.testing.assert_allclose(four["odin"], one["odin"], rtol=1e-4)
  np.testing.assert_array_equal(four["nn"], one["nn"])


def test_result_files_are_written_whole_or_not_at_all(tmp_path):
  from ncg_jax import sharding
  path = str(tmp_path / "sub" / "results.json")
  sharding.write_text(path, '{"a": 1}')
  def crash(f):
    f.write(b'{"a": ')  # killed mid-write
    raise KeyboardInterrupt
  try:
    sharding.write_file(path, crash)
  except KeyboardInterrupt:
    pass
  assert open(path).read() == '{"a": 1}'  # the old file, whole
  assert os.listdir(tmp_path / "sub") == ["results.json"]  # no temporary left behind
