"""What a trained (or imported) model is: a Linen module, its variables, and the input shape
it takes; and its eval-mode outputs over a whole split.

`Trained.logits_fn()` is the pure `x -> logits` that attacks and detectors take;
`logits_and_features(trained, x)` runs the model over an array of any length in fixed-shape
padded batches. Both compile once per architecture and input shape: the jitted functions
are cached per module (Linen modules are hashable dataclasses) and take the variables as
arguments.
"""
import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ncg_jax.batching import map_batches


def to_input(x: jnp.ndarray) -> jnp.ndarray:
  """uint8 images -> float32 in [0, 1]; features pass through as float32."""
  return x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)


class InputShapeError(ValueError):
  """Inputs of another shape than the one the model was trained or imported for."""


def check_shape(input_shape: tuple[int, ...] | None, shape: tuple[int, ...]) -> None:
  if input_shape is not None and tuple(shape) != tuple(input_shape):
    raise InputShapeError(
        f"the model takes inputs of shape {'x'.join(map(str, input_shape))}, got "
        f"{'x'.join(map(str, shape))}; resize the images (or import the model with another "
        "--input_size)")


def _eval_logits(model: nn.Module, input_shape, variables: dict, x: jnp.ndarray) -> jnp.ndarray:
  check_shape(input_shape, x.shape[1:])  # shapes are static: checked once per trace
  return model.apply(variables, x, train=False)[0]


@functools.lru_cache(maxsize=None)
def _eval_fn(model: nn.Module, input_shape) -> Any:
  return functools.partial(_eval_logits, model, input_shape)  # one object per architecture


@functools.lru_cache(maxsize=None)
def _outputs_fn(model: nn.Module):
  """jit(variables, x) -> (logits, features), compiled once per architecture and shape."""
  return jax.jit(lambda v, xb: model.apply(v, to_input(xb), train=False))


@functools.lru_cache(maxsize=None)
def _layer_fn(model: nn.Module, layer: str):
  """jit(variables, x) -> the sown intermediate `layer`, flattened per example (rank-4 maps
  channel-major, as PyTorch's NCHW `.view(B, -1)`)."""
  def fn(v, xb):
    _, state = model.apply(v, to_input(xb), train=False, mutable=["intermediates"])
    inter = state["intermediates"]
    if layer not in inter:
      raise KeyError(f"unknown layer '{layer}'; this model sows: {', '.join(sorted(inter))}")
    h = inter[layer][0]
    h = h.transpose(0, 3, 1, 2) if h.ndim == 4 else h
    return h.reshape(h.shape[0], -1).astype(jnp.float32)
  return jax.jit(fn)


@dataclasses.dataclass
class Trained:
  model: nn.Module
  params: Any
  model_state: dict
  input_shape: tuple[int, ...] | None = None  # one example's shape ([0, 1] pixels or features)

  def variables(self) -> dict:
    return {"params": self.params, **self.model_state}

  def logits_fn(self) -> jax.tree_util.Partial:
    """Eval-mode x (float, [0,1] pixels or features) -> logits, for attacks and detectors.
    A `Partial` whose leaves are the variables: jit traces them instead of baking them in,
    and one compiled attack serves every model of the same architecture."""
    return jax.tree_util.Partial(_eval_fn(self.model, self.input_shape), self.variables())


def logits_and_features(trained: Trained, x: np.ndarray, batch_size: int = 512):
  """(logits [N, K], penultimate features [N, D]) of `trained` in eval mode."""
  check_shape(trained.input_shape, x.shape[1:])
  fn, variables = _outputs_fn(trained.model), trained.variables()
  return map_batches(lambda xb: fn(variables, xb), x, batch_size=batch_size,
                     label="logits and features")


def embed(trained: Trained, x: np.ndarray, layer: str = "features", batch_size: int = 512):
  """The intermediate `layer` of `trained` for every row of x, flattened: [N, D]."""
  check_shape(trained.input_shape, x.shape[1:])
  fn, variables = _layer_fn(trained.model, layer), trained.variables()
  return map_batches(lambda xb: fn(variables, xb), x, batch_size=batch_size,
                     label=f"features ({layer})")
