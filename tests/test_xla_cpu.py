"""`import ncg_jax` applies the XLA:CPU settings (ncg_jax/xla_cpu.py) in a fresh process:
the convolution flag before JAX starts, a one-line notice when JAX started first, and freed
memory kept for reuse (no fresh pages, hence no page faults, on repeated calls)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAULTS = """
import resource
import ncg_jax, jax, jax.numpy as jnp
from ncg_jax import models
model = models.create("cnn002", 9)
params, _ = models.init(model, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
x = jnp.ones((64, 28, 28, 1))
grad = jax.jit(jax.grad(lambda p: model.apply({"params": p}, x)[0].sum()))
for _ in range(3):
  jax.block_until_ready(grad(params))
faults = []
for _ in range(7):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  jax.block_until_ready(grad(params))
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sorted(faults)[3])  # the median call
print(ncg_jax.xla_cpu.configure())
"""


def _python(code: str, **extra_env) -> subprocess.CompletedProcess:
  """`code` in a fresh interpreter without this process's XLA settings."""
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "NCG_JAX_KEEP_XLA_DEFAULTS")}
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env={**env, **extra_env})
  assert out.returncode == 0, out.stderr
  return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_repeated_calls_reuse_memory_and_defaults_can_be_kept():
  faults, state = _python(FAULTS).stdout.split("\n")[:2]
  assert "'conv_flag': True" in state and "'freed_memory': True" in state
  faults_default, state_default = _python(FAULTS, NCG_JAX_KEEP_XLA_DEFAULTS="1").stdout.split("\n")[:2]
  assert "'conv_flag': False" in state_default and "'freed_memory': False" in state_default
  # A CNN002 gradient at batch 64 faults in ~20,700 fresh pages per call by default and 0-2
  # with freed memory kept (measured on the 2-core VM). The median call: on a loaded machine
  # an occasional call still faults in ~30 MB (seen once or twice in 20 calls), which a mean
  # over a few calls would mistake for the default. CI under two xdist workers measured a
  # median of 225, so the bound is relative: a twentieth of the default's fresh pages
  assert 20 * float(faults) < float(faults_default), (faults, faults_default)
  assert float(faults_default) > 2_000, faults_default


def test_notice_when_jax_started_before_ncg_jax():
  code = "import jax.numpy as jnp; jnp.ones(1).block_until_ready(); import ncg_jax"
  lines = [l for l in _python(code).stderr.splitlines() if l.startswith("ncg_jax:")]
  assert len(lines) == 1 and "import ncg_jax first" in lines[0]
  assert "ncg_jax:" not in _python("import ncg_jax; import jax.numpy as jnp; jnp.ones(1)").stderr


AMD = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC 9B14
flags\t\t: fpu sse4_2 avx fma avx2 bmi2

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: another
flags\t\t: avx512f
"""


def test_host_cpu_describes_the_first_processor_and_its_widest_vector_extension():
  from ncg_jax.xla_cpu import host_cpu
  amd = host_cpu(AMD)
  assert (amd["vendor"], amd["model"], amd["family"], amd["model_number"], amd["vector"]) == (
      "AuthenticAMD", "AMD EPYC 9B14", "25", "17", "avx2")
  intel = host_cpu(AMD.replace("avx2 bmi2", "avx2 avx512f avx512bw"))
  assert intel["vector"] == "avx512f"
  arm = host_cpu("processor\t: 0\nFeatures\t: fp asimd sve\nCPU implementer\t: 0x41\n")
  assert arm["vendor"] == "0x41" and arm["vector"] == "sve"
  assert host_cpu()["cpus"] >= 1  # this machine's
