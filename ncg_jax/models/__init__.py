"""Model registry. Every model is a Flax Linen module called as
`logits, features = model.apply(variables, x, train=...)`; `features` are the penultimate
activations. Models also `sow` named intermediates ('intermediates' collection) and mark
them with `perturb` ('perturbations' collection) so gradients w.r.t. them are one VJP away.
The last layer is a Dense named 'head' (detectors that need the linear head read it).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ncg_jax.models.cnn002 import CNN002
from ncg_jax.models.densenet import DenseNet
from ncg_jax.models.mlp import MLP
from ncg_jax.models.resnet import resnet18, resnet50
from ncg_jax.models.wrn import WideResNet
from ncg_jax.registry import Registry

MODELS = Registry("model")
MODELS.register("cnn002", CNN002)
MODELS.register("mlp", MLP)
MODELS.register("wrn_<depth>_<width>",
                lambda depth, width, **kw: WideResNet(depth=int(depth), width=int(width), **kw))
MODELS.register("resnet18", resnet18)
MODELS.register("resnet50", resnet50)
MODELS.register("densenet_bc_<depth>_<growth>",
                lambda depth, growth, **kw: DenseNet(depth=int(depth), growth=int(growth), **kw))

# Collections that belong to the model state (trained or running statistics). Everything
# else `init` creates (perturbations, intermediates) is scratch and is dropped.
STATE_COLLECTIONS = ("batch_stats",)


def create(name: str, num_classes: int, **kwargs) -> nn.Module:
  return MODELS.get(name, num_classes=num_classes, **kwargs)


def init(model: nn.Module, key: jax.Array, example_x: jnp.ndarray) -> tuple[Any, dict]:
  """Returns (params, model_state) for an input shaped like `example_x` (batch of any size)."""
  variables = model.init({"params": key, "dropout": key}, example_x[:1], train=False)
  state = {k: v for k, v in variables.items() if k in STATE_COLLECTIONS}
  return variables["params"], state
