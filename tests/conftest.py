import os

# implicit rank promotion is an error in the tests and in the entry points they run
# (subprocesses inherit the variable); set before JAX is imported
os.environ["JAX_NUMPY_RANK_PROMOTION"] = "raise"

# The entry points the tests run as subprocesses share one persistent compilation cache for
# the session (both xdist workers inherit this variable from the controller, which makes the
# folder): a program compiled by one run (CNN002's train steps, the attacks) is loaded by the
# next run that needs it instead of compiled again. Fresh each session; the size limit turns
# on JAX's file lock, so one process never reads an entry while another writes it.
if "NCG_JAX_TEST_JIT_CACHE" not in os.environ:
  import atexit
  import shutil
  import tempfile
  os.environ["NCG_JAX_TEST_JIT_CACHE"] = tempfile.mkdtemp(prefix="ncg_jax_tests_jit_")
  atexit.register(shutil.rmtree, os.environ["NCG_JAX_TEST_JIT_CACHE"], True)

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


def normal(seed: int, shape) -> "jax.Array":
  """Standard normal float32 test inputs drawn by numpy: an eager `jax.random.normal`
  compiles a sampler for every shape (about a second each at XLA:CPU's -O3)."""
  import jax.numpy as jnp
  import numpy as np
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32))


def uniform(seed: int, shape) -> "jax.Array":
  """Uniform [0, 1) float32 test inputs drawn by numpy (see `normal`)."""
  import jax.numpy as jnp
  import numpy as np
  return jnp.asarray(np.random.default_rng(seed).random(shape, np.float32))


def subprocess_env() -> dict[str, str]:
  """The environment of an entry point run by a test: unbuffered output and the session's
  compilation cache (above)."""
  return dict(os.environ, PYTHONUNBUFFERED="1",
              JAX_COMPILATION_CACHE_DIR=os.environ["NCG_JAX_TEST_JIT_CACHE"],
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_COMPILATION_CACHE_MAX_SIZE=str(8 << 30))


def run_module(module: str, *args: str, timeout: int = 600):
  """Runs `python -m module args` in a subprocess; returns CompletedProcess."""
  import subprocess
  import sys
  env = subprocess_env()
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                        timeout=timeout, env=env, cwd=os.path.dirname(os.path.dirname(__file__)))
