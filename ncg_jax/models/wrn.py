"""Pre-activation WideResNet (Zagoruyko & Komodakis, BMVC 2016), `wrn_<depth>_<width>`.

As the NCG paper's `archs/wideresnet.py`: depth = 6n + 4 (n basic blocks per stage), stage
widths 16k, 32k, 64k after a 16-channel stem, strides 1/2/2, BN-ReLU before each 3x3
convolution, a 1x1 projection shortcut where the shape changes (taken from the pre-activated
input), no dropout, final BN-ReLU, global average pooling and a linear head. Inputs are raw
[0, 1] pixels (the paper's WRN has no input normalisation). `wrn_40_10`: 6 blocks per stage,
widths 160/320/640, about 55.8M parameters. ODIN's WRN-28-10 (`code/wideresnet.py`) is the
same network, `wrn_28_10`, fed images normalised with ODIN's statistics: imported ODIN
models carry them as `mean`/`std`, applied inside.
"""
import flax.linen as nn
import jax.numpy as jnp

from ncg_jax.models.layers import Conv, normalize


class _Block(nn.Module):
  width: int
  stride: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x, train: bool):
    bn = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                   dtype=self.dtype, name=name)
    init = nn.initializers.kaiming_normal()
    o = nn.relu(bn("bn1")(x))
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.width:
      shortcut = nn.Conv(self.width, (1, 1), (self.stride, self.stride), use_bias=False,
                         kernel_init=init, dtype=self.dtype, name="shortcut")(o)
    if self.stride == 1:
      y = Conv(self.width, (3, 3), "SAME", use_bias=False, kernel_init=init, dtype=self.dtype,
               name="conv1")(o)
    else:
      y = nn.Conv(self.width, (3, 3), (self.stride, self.stride), padding=((1, 1), (1, 1)),
                  use_bias=False, kernel_init=init, dtype=self.dtype, name="conv1")(o)
    y = nn.relu(bn("bn2")(y))
    y = Conv(self.width, (3, 3), "SAME", use_bias=False, kernel_init=init, dtype=self.dtype,
             name="conv2")(y)
    return y + shortcut


class WideResNet(nn.Module):
  num_classes: int
  depth: int = 40
  width: int = 10
  mean: tuple[float, ...] | None = None  # input normalisation inside (None: raw [0, 1])
  std: tuple[float, ...] | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if (self.depth - 4) % 6:
      raise ValueError(f"WideResNet depth must be 6n + 4, got {self.depth}")
    n = (self.depth - 4) // 6
    x = x.astype(self.dtype)
    if self.mean is not None:
      x = normalize(x, self.mean, self.std)
    x = Conv(16, (3, 3), "SAME", use_bias=False, kernel_init=nn.initializers.kaiming_normal(),
             dtype=self.dtype, name="stem")(x)
    for stage, (w, stride) in enumerate([(16 * self.width, 1), (32 * self.width, 2),
                                         (64 * self.width, 2)]):
      for i in range(n):
        x = _Block(w, stride if i == 0 else 1, self.dtype, name=f"stage{stage + 1}_{i}")(x, train)
      x = self.perturb(f"stage{stage + 1}", x)
      self.sow("intermediates", f"stage{stage + 1}", x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                             dtype=self.dtype, name="bn_final")(x))
    feats = self.perturb("features", jnp.mean(x, axis=(1, 2)))
    self.sow("intermediates", "features", feats)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(feats)
    return logits.astype(jnp.float32), feats.astype(jnp.float32)
