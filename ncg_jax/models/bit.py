"""BiT ResNet-v2 (Kolesnikov et al., ECCV 2020): `bit_s_r<depth>x<width>` and
`bit_m_r<depth>x<width>` (S and M differ only in their pre-training data), e.g. `bit_s_r101x1`,
GradNorm's ImageNet classifier.

As BiT's own code (`bit_pytorch/models.py`, `bit_tf2/models.py`) and GradNorm's copy of it:
weight-standardised convolutions (kernel minus its per-output-channel mean, over
sqrt(variance + 1e-10)), GroupNorm with 32 groups (eps 1e-5) instead of BatchNorm, a root of a
7x7 stride-2 convolution to 64w channels, one pixel of zero padding and a 3x3 stride-2 max-pool
(zero padding, not -inf: BiT's `ConstantPad2d(1, 0)`); pre-activation bottleneck units
(GN-ReLU, then a 1x1 projection of that activation where the shape changes, 1x1 -> GN-ReLU ->
3x3 with the stride -> GN-ReLU -> 1x1, added to the shortcut) in four blocks of widths
256w/512w/1024w/2048w; a final GN-ReLU, global average pooling (the penultimate features)
and a linear head (BiT's 1x1 convolution). Depth 50/101/152 = units (3,4,6,3)/(3,4,23,3)/
(3,8,36,3). Inputs are [0, 1] pixels; BiT's [-1, 1] scaling (mean = std = 0.5) is inside.

Intermediates (`sow` and `perturb`): root, block1..block4 (the five maps of GradNorm's
Mahalanobis layers) and features.
"""
import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from ncg_jax.models.layers import normalize
from ncg_jax.registry import ConfigError

UNITS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
BIT_MEAN, BIT_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


class StdConv(nn.Module):
  """Bias-free convolution with a weight-standardised HWIO kernel, PyTorch's symmetric
  padding k // 2."""
  features: int
  kernel: int
  stride: int = 1
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    w = self.param("kernel", nn.initializers.lecun_normal(),
                   (self.kernel, self.kernel, x.shape[-1], self.features))
    mean = jnp.mean(w, axis=(0, 1, 2), keepdims=True)
    var = jnp.var(w, axis=(0, 1, 2), keepdims=True)
    w = (w - mean) / jnp.sqrt(var + 1e-10)
    pad = self.kernel // 2
    return lax.conv_general_dilated(x, w.astype(self.dtype), (self.stride, self.stride),
                                    ((pad, pad), (pad, pad)),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


class Unit(nn.Module):
  width: int  # the bottleneck's middle width; output 4 x width
  stride: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x):
    gn = lambda name: nn.GroupNorm(num_groups=32, epsilon=1e-5, dtype=self.dtype, name=name)
    out = 4 * self.width
    a = nn.relu(gn("gn1")(x))
    shortcut = x
    if self.stride != 1 or x.shape[-1] != out:
      shortcut = StdConv(out, 1, self.stride, self.dtype, name="downsample")(a)
    y = StdConv(self.width, 1, 1, self.dtype, name="conv1")(a)
    y = StdConv(self.width, 3, self.stride, self.dtype, name="conv2")(nn.relu(gn("gn2")(y)))
    y = StdConv(out, 1, 1, self.dtype, name="conv3")(nn.relu(gn("gn3")(y)))
    return y + shortcut


class ResNetV2(nn.Module):
  num_classes: int
  units: tuple[int, ...] = (3, 4, 23, 3)
  width: int = 64  # 64 x the width factor; reduced only in tests
  mean: tuple[float, ...] = BIT_MEAN
  std: tuple[float, ...] = BIT_STD
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # GroupNorm: no batch statistics
    x = normalize(x.astype(self.dtype), self.mean, self.std)
    x = StdConv(self.width, 7, 2, self.dtype, name="root_conv")(x)
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    x = nn.max_pool(x, (3, 3), (2, 2), padding="VALID")
    x = self.perturb("root", x)
    self.sow("intermediates", "root", x)
    for b, n in enumerate(self.units):
      for u in range(n):
        stride = 2 if b > 0 and u == 0 else 1
        x = Unit(self.width * 2 ** b, stride, self.dtype, name=f"block{b + 1}_unit{u + 1:02d}")(x)
      x = self.perturb(f"block{b + 1}", x)
      self.sow("intermediates", f"block{b + 1}", x)
    x = nn.relu(nn.GroupNorm(num_groups=32, epsilon=1e-5, dtype=self.dtype, name="head_gn")(x))
    feats = self.perturb("features", jnp.mean(x, axis=(1, 2)))
    self.sow("intermediates", "features", feats)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(feats)
    return logits.astype(jnp.float32), feats.astype(jnp.float32)


def bit(depth: str, factor: str, num_classes: int, **kw) -> ResNetV2:
  """`bit_s_r<depth>x<factor>`: depth 50, 101 or 152, width factor 1-4."""
  if int(depth) not in UNITS:
    raise ConfigError(f"BiT depth {depth} is not one of {', '.join(map(str, UNITS))}")
  return ResNetV2(num_classes, **{"units": UNITS[int(depth)], "width": 64 * int(factor), **kw})
