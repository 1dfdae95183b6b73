"""Model registry. Every model is a Flax Linen module called as
`logits, features = model.apply(variables, x, train=...)`; `features` are the penultimate
activations. Models also `sow` named intermediates ('intermediates' collection) and mark
them with `perturb` ('perturbations' collection) so gradients w.r.t. them are one VJP away.
The last layer is a Dense named 'head' (detectors that need the linear head read it).

`create(name, num_classes, **fields)` builds one; fields override the architecture's
(normalisation statistics of imported checkpoints, reduced widths of test twins). What a
trained or imported model is (`Trained`) and its outputs over a split live in `trained.py`;
`import_weights` reads PyTorch and BiT checkpoints into a `Trained`.
"""
import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ncg_jax.models.bit import bit
from ncg_jax.models.cnn002 import CNN002
from ncg_jax.models.densenet import DenseNet
from ncg_jax.models.mlp import MLP
from ncg_jax.models.resnet import resnet18, resnet18_224, resnet50, resnet50_cifar
from ncg_jax.models.trained import (Trained, embed, logits_and_features,  # noqa: F401
                                    to_input)
from ncg_jax.models.vit import vit_b_16
from ncg_jax.models.wrn import WideResNet
from ncg_jax.registry import Registry

MODELS = Registry("model")
MODELS.register("cnn002", CNN002)
MODELS.register("mlp", MLP)
MODELS.register("wrn_<depth>_<width>",
                lambda depth, width, **kw: WideResNet(depth=int(depth), width=int(width), **kw))
MODELS.register("resnet18", resnet18)
MODELS.register("resnet18_224", resnet18_224)
MODELS.register("resnet50", resnet50)
MODELS.register("resnet50_cifar", resnet50_cifar)
MODELS.register("vit_b_16", vit_b_16)
MODELS.register("bit_s_r<depth>x<factor>", bit)
MODELS.register("bit_m_r<depth>x<factor>", bit)
MODELS.register("densenet_bc_<depth>_<growth>",
                lambda depth, growth, **kw: DenseNet(depth=int(depth), growth=int(growth), **kw))

# The NCG paper's feature space per architecture (lolip's `get_repr` defaults): CNN002's
# 1,024-d convolutional features; every other network's penultimate (pooled) features.
FEATURE_LAYERS = {"cnn002": "conv_features"}


def feature_layer(name: str) -> str:
  return FEATURE_LAYERS.get(name, "features")


# Collections that belong to the model state (trained or running statistics). Everything
# else `init` creates (perturbations, intermediates) is scratch and is dropped.
STATE_COLLECTIONS = ("batch_stats",)


def create(name: str, num_classes: int, **fields) -> nn.Module:
  """Fields read back from JSON arrive as lists; modules need hashable tuples."""
  fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
  return MODELS.get(name, num_classes=num_classes, **fields)


def fields_of(model, arch: str) -> dict:
  """The architecture fields of `model` that differ from the registry's `arch` (what
  `models.create` needs to build it again), JSON-ready."""
  default = create(arch, model.num_classes)
  out = {}
  for f in dataclasses.fields(model):
    value = getattr(model, f.name)
    if f.name in ("parent", "name", "dtype") or value == getattr(default, f.name):
      continue
    out[f.name] = list(value) if isinstance(value, tuple) else value
  return out


# LLVM at -O1 for the initialisation program on CPU. Flax's initialisers draw each kernel
# through `truncated_normal` (threefry bits and an inverse-erf polynomial), and at XLA:CPU's
# default -O3 every kernel shape took 0.2-0.8 s to compile: run op by op, WRN-10-1's init
# took 8.0 s, jitted 4.8 s, jitted at -O1 1.7 s (DenseNet-BC-40-12: 16.0, 9.6, 4.5 s). The
# values are the same bits at -O1 and -O3 for every architecture in the registry (checked
# on jaxlib 0.10); -O0 changes them, so it is not used. Against Flax's op-by-op `model.init`
# they are the same bits for the architectures ncg_jax trains (CNN002, MLP, WRN, ResNet,
# DenseNet); a ViT's position embedding differs by one ulp (XLA folds `normal(0.02)`'s scale
# into the sampler's constant). `tests/test_models.py` checks CNN002 and a small ViT against
# the op-by-op init.
# Other backends keep their defaults.
_CPU_INIT_OPTIONS = {"xla_backend_optimization_level": 1}


def _variables(model: nn.Module, key: jax.Array, x: jnp.ndarray) -> dict:
  return model.init({"params": key, "dropout": key}, x, train=False)


@functools.lru_cache(maxsize=None)
def _init_fn(model: nn.Module, backend: str):
  """One jitted initialisation per architecture (modules are hashable dataclasses)."""
  return jax.jit(functools.partial(_variables, model),
                 compiler_options=_CPU_INIT_OPTIONS if backend == "cpu" else None)


def init(model: nn.Module, key: jax.Array, example_x: jnp.ndarray) -> tuple[Any, dict]:
  """Returns (params, model_state) for an input shaped like `example_x` (batch of any size):
  one compiled program per architecture and input shape (see `_CPU_INIT_OPTIONS`). Called
  inside a transformation (`jax.eval_shape`, `jit`, `vmap` over keys) it is part of that
  trace: compiler options belong to a top-level program only."""
  from jax._src import core  # no public test for "inside a trace" in jax 0.10
  if core.trace_state_clean():
    variables = _init_fn(model, jax.default_backend())(key, jnp.asarray(example_x[:1]))
  else:
    variables = _variables(model, key, example_x[:1])
  state = {k: v for k, v in variables.items() if k in STATE_COLLECTIONS}
  return variables["params"], state


from ncg_jax.models.pretrained import import_weights  # noqa: E402,F401 (uses MODELS)
