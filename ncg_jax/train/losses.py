"""Training losses as pure functions, chosen by name through `LOSSES`.

A loss is `loss_fn(forward, params, model_state, x, y, key) -> (loss, (model_state, logits))`
where `forward(params, model_state, x, train, key) -> (logits, model_state)` runs the model
in train mode (dropout on, BatchNorm on batch statistics and updated) or eval mode.
`make_loss(name, cfg)` builds one; `cfg` carries attack settings for the robust losses.
"""
import jax
import jax.numpy as jnp
import optax

from ncg_jax.registry import Registry

LOSSES = Registry("loss")


def cross_entropy(logits_BxK: jnp.ndarray, y_B: jnp.ndarray) -> jnp.ndarray:
  """Per-example softmax cross-entropy with integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(logits_BxK, y_B)


@LOSSES.register("ce")
def make_ce(cfg=None):
  def loss_fn(forward, params, model_state, x, y, key):
    logits, model_state = forward(params, model_state, x, train=True, key=key)
    return cross_entropy(logits, y).mean(), (model_state, logits)
  return loss_fn


def make_loss(name: str, cfg=None):
  return LOSSES.get(name, cfg=cfg)


def run_name(name: str, cfg=None) -> str:
  """The directory name of a run: the loss name, plus the attack settings it depends on."""
  LOSSES.lookup(name)
  return name
