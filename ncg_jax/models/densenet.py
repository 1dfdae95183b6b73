"""DenseNet-BC (Huang et al., CVPR 2017) as in ODIN (Liang et al., ICLR 2018):
`densenet_bc_100_12`, depth 100, growth rate 12, compression 0.5, about 0.77M parameters.

A 3x3 stem to 2 x growth channels; three dense blocks of (depth - 4) / 6 = 16 bottleneck
layers (BN-ReLU-1x1 conv to 4 x growth, BN-ReLU-3x3 conv to growth, concatenated); between
blocks a transition (BN-ReLU-1x1 conv halving the channels, 2x2 average pooling); a final
BN-ReLU, global average pooling and a linear head. ODIN normalises inputs with mean
(125.3, 123.0, 113.9)/255 and std (63.0, 62.1, 66.7)/255; that normalisation is inside.
Intermediates: block1..block3 and features.
"""
import flax.linen as nn
import jax.numpy as jnp

from ncg_jax.models.layers import batch_norm, conv, normalize

ODIN_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
ODIN_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)


class DenseNet(nn.Module):
  num_classes: int
  depth: int = 100
  growth: int = 12
  compression: float = 0.5
  mean: tuple[float, ...] = ODIN_MEAN
  std: tuple[float, ...] = ODIN_STD
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if (self.depth - 4) % 6:
      raise ValueError(f"DenseNet-BC depth must be 6n + 4, got {self.depth}")
    n = (self.depth - 4) // 6
    bn_relu = lambda name, y: nn.relu(batch_norm(train, self.dtype, name)(y))
    x = conv(2 * self.growth, 3, 1, self.dtype, "stem")(normalize(x.astype(self.dtype),
                                                                  self.mean, self.std))
    for b in range(3):
      for i in range(n):
        y = conv(4 * self.growth, 1, 1, self.dtype, f"block{b + 1}_{i}_conv1")(
            bn_relu(f"block{b + 1}_{i}_bn1", x))
        y = conv(self.growth, 3, 1, self.dtype, f"block{b + 1}_{i}_conv2")(
            bn_relu(f"block{b + 1}_{i}_bn2", y))
        x = jnp.concatenate([x, y], axis=-1)
      x = self.perturb(f"block{b + 1}", x)
      self.sow("intermediates", f"block{b + 1}", x)
      if b < 2:
        x = conv(int(x.shape[-1] * self.compression), 1, 1, self.dtype, f"transition{b + 1}")(
            bn_relu(f"transition{b + 1}_bn", x))
        x = nn.avg_pool(x, (2, 2), (2, 2))
    feats = self.perturb("features", jnp.mean(bn_relu("bn_final", x), axis=(1, 2)))
    self.sow("intermediates", "features", feats)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(feats)
    return logits.astype(jnp.float32), feats.astype(jnp.float32)
