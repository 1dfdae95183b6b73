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


def init(model: nn.Module, key: jax.Array, example_x: jnp.ndarray) -> tuple[Any, dict]:
  """Returns (params, model_state) for an input shaped like `example_x` (batch of any size)."""
  variables = model.init({"params": key, "dropout": key}, example_x[:1], train=False)
  state = {k: v for k, v in variables.items() if k in STATE_COLLECTIONS}
  return variables["params"], state


from ncg_jax.models.pretrained import import_weights  # noqa: E402,F401 (uses MODELS)
