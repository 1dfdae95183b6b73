import os

# implicit rank promotion is an error in the tests and in the entry points they run
# (subprocesses inherit the variable); set before JAX is imported
os.environ["JAX_NUMPY_RANK_PROMOTION"] = "raise"

import pytest  # noqa: E402

import ncg_jax  # noqa: E402,F401  (its XLA:CPU settings, as in the entry points)


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
