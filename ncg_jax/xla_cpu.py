"""CPU settings for convolutional training, applied by `import ncg_jax` (see `configure`).

Two causes of slow gradients on CPU, both measured on CNN002 at batch 128
(`python -m benchmarks.cnn002`):

1. Convolution library (jaxlib 0.10). XLA:CPU hands convolutions to YNNPACK library fusions.
   A YNNPACK convolution is fast when its output feeds a fused reduction (a forward pass into
   max-pooling), but about 8x slower when its output is materialised, which every backward
   pass needs, and its weight-gradient convolution is slow as well. Removing the
   individual-convolution YNN fusion (`FLAG`) sends convolutions to XLA's Eigen path: the
   parameter gradient went from ~255 ms to ~100 ms. XLA reads the flag when its backend
   starts, so it is set only before the first JAX computation.
2. Fresh pages on every call. XLA:CPU allocates each call's temporary buffers (~100 MB for a
   CNN002 gradient) with malloc, and glibc serves blocks above its mmap threshold (at most
   32 MB) with a fresh mmap that it unmaps on free: every call touched ~16,000 new pages
   (16,000 page faults, counted with `getrusage`), about 30 ms of a 75 ms gradient.
   `keep_freed_memory` sets glibc's M_MMAP_MAX to 0 and a high trim threshold, so freed
   blocks stay in the process and are reused (0 faults per call; the parameter gradient
   75 -> 48 ms). The cost: memory freed by the process is not returned to the system until
   it exits (its peak stays resident). Applied only where no accelerator plugin is installed.
   Not covered: a block larger than a per-thread arena's 64 MB heap, requested by one of
   XLA's worker threads, is still mmapped and unmapped by glibc (a TRADES step's 85 and
   100 MB temporaries: ~34,000 faults per step). One arena for all threads (M_ARENA_MAX=1)
   removes those faults but made the train steps slower (PGD-AT by 15-25%,
   `benchmarks/RESULTS.md`).

Set NCG_JAX_KEEP_XLA_DEFAULTS=1 before importing ncg_jax to keep both defaults.
"""
import ctypes
import ctypes.util
import importlib.metadata
import os
import sys

FLAG = "--xla_cpu_experimental_ynn_fusion_type=-LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"
VERIFIED_JAXLIB = ("0.10.",)
_ACCELERATOR_PACKAGES = ("jax-cuda12-plugin", "jax-cuda13-plugin", "jax-rocm60-plugin",
                         "jax-rocm7-plugin", "libtpu", "libtpu-nightly")
# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def _installed(package: str) -> bool:
  try:
    importlib.metadata.version(package)
    return True
  except importlib.metadata.PackageNotFoundError:
    return False


def _backend_started() -> bool:
  if "jax" not in sys.modules:
    return False
  from jax._src import xla_bridge
  return xla_bridge.backends_are_initialized()


def _cpu_backend() -> bool:
  import jax
  return jax.default_backend() == "cpu"


def add_flag() -> bool:
  """Adds FLAG to XLA_FLAGS if safe; returns whether it is in effect. The flag exists only in
  some jaxlib versions and an unknown XLA flag aborts the process, so it is added only for
  versions where it was verified and only when the user has not set it."""
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_experimental_ynn_fusion_type" in flags:
    return FLAG in flags
  if (not _installed("jaxlib")
      or not importlib.metadata.version("jaxlib").startswith(VERIFIED_JAXLIB)):
    return False
  if _backend_started():
    return False
  os.environ["XLA_FLAGS"] = (flags + " " + FLAG).strip()
  return True


def keep_freed_memory() -> bool:
  """glibc only, CPU-only installs: large freed blocks stay in the process for reuse (see the
  module docstring). Returns whether the setting is in effect."""
  if not sys.platform.startswith("linux") or any(map(_installed, _ACCELERATOR_PACKAGES)):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # not glibc (e.g. musl)
    return False
  mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
  return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


_STATE: dict[str, bool] = {}
USER_XLA_FLAGS = os.environ.get("XLA_FLAGS")  # as the process started, before `add_flag`


def configure(notice: bool = False) -> dict[str, bool]:
  """Applies both settings once per process (nothing with NCG_JAX_KEEP_XLA_DEFAULTS=1) and
  returns which are in effect. With `notice`, says in one line on stderr when the
  convolution flag could not be set because JAX had already run a computation."""
  if not _STATE:
    keep = os.environ.get("NCG_JAX_KEEP_XLA_DEFAULTS") == "1"
    started = _backend_started()
    _STATE.update(conv_flag=not keep and add_flag(), freed_memory=not keep and keep_freed_memory())
    if notice and started and not keep and not _STATE["conv_flag"] and _cpu_backend():
      print("ncg_jax: JAX started before ncg_jax was imported, so XLA:CPU keeps its slow "
            "convolution gradients; import ncg_jax first or set XLA_FLAGS=" + FLAG,
            file=sys.stderr)
  return dict(_STATE)


# the widest vector extension named in /proc/cpuinfo's flags, widest first: XLA:CPU's, Eigen's
# and oneDNN's kernels (and so float sums' order) differ between them
_VECTOR_FLAGS = ("avx512f", "avx2", "avx", "sse4_2", "sve", "asimd")


def host_cpu(cpuinfo: str | None = None) -> dict:
  """The host CPU as Linux's /proc/cpuinfo describes it (`cpuinfo`: its text, read when None):
  vendor, model name, family and model numbers, the widest vector extension, and the
  logical CPUs this process may use; elsewhere (no /proc/cpuinfo) the model as
  `platform.processor()` gives it and the CPUs.

  Results record it (`experiments.common.versions`) because the robust trainings' figures
  depend on the CPU: the same code and seed gave `make demo`'s TRADES pixel NCG 0.633 on an
  AMD EPYC (AVX2) and 0.622 on an Intel Xeon with AVX-512 (README, "Measured")."""
  import platform
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  if cpuinfo is None:
    try:
      with open("/proc/cpuinfo") as f:
        cpuinfo = f.read()
    except OSError:
      return {"model": platform.processor() or platform.machine(), "cpus": cores}
  fields: dict[str, str] = {}
  for line in cpuinfo.splitlines():
    key, sep, value = line.partition(":")
    if not sep:
      if fields:  # the first processor's block is enough
        break
      continue
    fields.setdefault(key.strip(), value.strip())
  flags = set((fields.get("flags") or fields.get("Features") or "").split())
  return {"vendor": fields.get("vendor_id", fields.get("CPU implementer", "")),
          "model": fields.get("model name", platform.processor() or platform.machine()),
          "family": fields.get("cpu family", ""), "model_number": fields.get("model", ""),
          "vector": next((v for v in _VECTOR_FLAGS if v in flags), ""), "cpus": cores}
