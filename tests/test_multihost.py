"""Two jax.distributed processes on localhost (CPU, gloo collectives) train like one."""
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from ncg_jax import runs


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_training_agrees_with_one_process(digits9, data_dir, tmp_path):
  root = os.path.dirname(os.path.dirname(__file__))
  common = [sys.executable, "-m", "experiments.train", "--dataset=digitswo9", "--epochs=2",
            f"--data_dir={data_dir}"]
  from conftest import subprocess_env
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  env.pop("XLA_FLAGS", None)  # one CPU device per process
  single_env = {k: v for k, v in subprocess_env().items() if k != "XLA_FLAGS"}
  single = subprocess.run(common + [f"--workdir={tmp_path / 'one'}"], capture_output=True,
                          text=True, timeout=600, env=single_env, cwd=root)
  assert single.returncode == 0, single.stderr[-3000:]
  port = free_port()
  procs = [subprocess.Popen(common + [f"--workdir={tmp_path / 'two'}", "--multihost",
                                      f"--coordinator_address=127.0.0.1:{port}",
                                      "--num_processes=2", f"--process_id={i}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=root) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  # every process reports the same test accuracy, equal to the single-process run's
  acc = lambda text: [l for l in text.splitlines() if l.startswith("test accuracy")][-1]
  assert acc(outs[0][0]) == acc(outs[1][0]) == acc(single.stdout)
  # and the checkpointed parameters agree to float rounding
  params = {}
  for name in ("one", "two"):
    record = runs.find(str(tmp_path / name), "digitswo9", "cnn002", 0, "pixel")["ce"]
    t = runs.load(record, workdir=str(tmp_path / name), dataset="digitswo9", model_name="cnn002",
                  data=digits9.train, num_classes=9)
    params[name] = [np.asarray(v) for v in jax.tree.leaves(t.params)]
  for a, b in zip(params["one"], params["two"]):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
