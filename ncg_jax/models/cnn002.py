"""CNN002: the NCG paper's MNIST network (the TRADES small CNN).

conv3x3 32 -> conv3x3 32 -> maxpool -> conv3x3 64 -> conv3x3 64 -> maxpool -> flatten (1024
for 28x28 inputs) -> FC 200 -> dropout 0.5 -> FC 200 -> FC K. Valid (unpadded) convolutions,
ReLU after every layer but the last, Kaiming-normal convolutions with zero bias, and a
zero-initialised last layer, as `lolip/models/torch_utils/archs/__init__.py` of the paper's code.
With `torch_init` the convolutions are drawn from an untruncated normal and fc1/fc2 from
PyTorch's default Linear initialisation (weights and biases U(+-1/sqrt(fan_in))), as that code
leaves them; Flax's defaults are a truncated normal and LeCun-normal weights with zero biases.
The feature space of the NCG paper is `conv_features` (see `models.FEATURE_LAYERS`).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from ncg_jax.models.layers import Conv, max_pool_2x2


def torch_linear_init(fan_in: int):
  """PyTorch's default nn.Linear initialisation: weight and bias U(-1/sqrt(fan_in), +)."""
  bound = 1.0 / fan_in ** 0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class CNN002(nn.Module):
  num_classes: int
  torch_init: bool = False  # the paper code's PyTorch initialisation (see below)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool = False):
    conv_init = (nn.initializers.variance_scaling(2.0, "fan_in", "normal") if self.torch_init
                 else nn.initializers.kaiming_normal())
    dense = lambda f, fan_in, name: nn.Dense(
        f, name=name, dtype=self.dtype,
        **({"kernel_init": torch_linear_init(fan_in), "bias_init": torch_linear_init(fan_in)}
           if self.torch_init else {}))
    conv = lambda f, name: Conv(f, (3, 3), padding="VALID", name=name, dtype=self.dtype,
                                kernel_init=conv_init)
    x = x_BxHxWxC.astype(self.dtype)
    x = nn.relu(conv(32, "conv1")(x))
    x = nn.relu(conv(32, "conv2")(x))
    x = self.perturb("block1", max_pool_2x2(x))
    self.sow("intermediates", "block1", x)
    x = nn.relu(conv(64, "conv3")(x))
    x = nn.relu(conv(64, "conv4")(x))
    x = self.perturb("block2", max_pool_2x2(x))
    self.sow("intermediates", "block2", x)
    # the paper's feature space (lolip `CNN002.get_repr`, mode "cnn_fet"): the 1,024 values
    # after the second max-pool, flattened channel-major as PyTorch's NCHW `.view(-1, 1024)`
    self.sow("intermediates", "conv_features", x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(dense(200, x.shape[-1], "fc1")(x))
    x = nn.Dropout(0.5, deterministic=not train)(x)
    feats = nn.relu(dense(200, 200, "fc2")(x))
    feats = self.perturb("features", feats)
    self.sow("intermediates", "features", feats)
    logits = nn.Dense(self.num_classes, name="head", dtype=self.dtype,
                      kernel_init=nn.initializers.zeros)(feats)
    return logits.astype(jnp.float32), feats.astype(jnp.float32)
