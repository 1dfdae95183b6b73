"""CNN002: the NCG paper's MNIST network (the TRADES small CNN).

conv3x3 32 -> conv3x3 32 -> maxpool -> conv3x3 64 -> conv3x3 64 -> maxpool -> flatten (1024
for 28x28 inputs) -> FC 200 -> dropout 0.5 -> FC 200 -> FC K. Valid (unpadded) convolutions,
ReLU after every layer but the last, Kaiming-normal convolutions with zero bias, and a
zero-initialised last layer, as `lolip/models/torch_utils/archs/__init__.py` of the paper's code.
"""
import flax.linen as nn
import jax.numpy as jnp

from ncg_jax.models.layers import Conv, max_pool_2x2


class CNN002(nn.Module):
  num_classes: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool = False):
    conv = lambda f, name: Conv(f, (3, 3), padding="VALID", name=name, dtype=self.dtype,
                                kernel_init=nn.initializers.kaiming_normal())
    x = x_BxHxWxC.astype(self.dtype)
    x = nn.relu(conv(32, "conv1")(x))
    x = nn.relu(conv(32, "conv2")(x))
    x = self.perturb("block1", max_pool_2x2(x))
    self.sow("intermediates", "block1", x)
    x = nn.relu(conv(64, "conv3")(x))
    x = nn.relu(conv(64, "conv4")(x))
    x = self.perturb("block2", max_pool_2x2(x))
    self.sow("intermediates", "block2", x)
    x = x.reshape(x.shape[0], -1)
    self.sow("intermediates", "conv_features", x)
    x = nn.relu(nn.Dense(200, name="fc1", dtype=self.dtype)(x))
    x = nn.Dropout(0.5, deterministic=not train)(x)
    feats = nn.relu(nn.Dense(200, name="fc2", dtype=self.dtype)(x))
    feats = self.perturb("features", feats)
    self.sow("intermediates", "features", feats)
    logits = nn.Dense(self.num_classes, name="head", dtype=self.dtype,
                      kernel_init=nn.initializers.zeros)(feats)
    return logits.astype(jnp.float32), feats.astype(jnp.float32)
