"""XLA:CPU settings for convolutional training; call `configure()` before JAX starts.

Cause of slow gradients on CPU (jaxlib 0.10): XLA:CPU hands convolutions to YNNPACK
library fusions. A YNNPACK convolution is fast when its output feeds a fused reduction
(a forward pass into max-pooling), but about 8x slower when its output is materialised,
which every backward pass needs (the ReLU mask and the weight gradient read it), and its
weight-gradient convolution (batch as the contracted feature, a 24x24 window for CNN002's
conv2) is slow as well. Profiled on CNN002, batch 128: conv2's forward took 93 ms and its
weight gradient 82 ms inside the gradient program, against 15 ms for the whole forward.
Removing the individual-convolution YNN fusion sends convolutions to XLA's Eigen path and
cuts the parameter gradient from ~255 ms to ~100 ms (benchmarks/cnn002.py).

The flag exists only in some jaxlib versions and an unknown XLA flag aborts the process, so
it is added only for versions where it was verified, only when the user has not set it,
and never when NCG_JAX_KEEP_XLA_DEFAULTS=1.
"""
import importlib.metadata
import os

FLAG = "--xla_cpu_experimental_ynn_fusion_type=-LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"
VERIFIED_JAXLIB = ("0.10.",)


def configure() -> bool:
  """Adds FLAG to XLA_FLAGS if safe; returns whether it is in effect. Must run before the
  first JAX computation (the flags are read when the backend starts)."""
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_experimental_ynn_fusion_type" in flags:
    return FLAG in flags
  if os.environ.get("NCG_JAX_KEEP_XLA_DEFAULTS") == "1":
    return False
  try:
    version = importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return False
  if not version.startswith(VERIFIED_JAXLIB):
    return False
  os.environ["XLA_FLAGS"] = (flags + " " + FLAG).strip()
  return True
