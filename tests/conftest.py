import os

import pytest

from ncg_jax import xla_cpu

xla_cpu.configure()  # the same XLA:CPU setting as the entry points


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """A TFDS data dir shared by the session; `digits` is prepared into it from scikit-learn."""
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def digits9(data_dir):
  from ncg_jax import data
  return data.load("digitswo9", data_dir)


def run_module(module: str, *args: str, timeout: int = 600):
  """Runs `python -m module args` in a subprocess; returns CompletedProcess."""
  import subprocess
  import sys
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                        timeout=timeout, env=env, cwd=os.path.dirname(os.path.dirname(__file__)))
