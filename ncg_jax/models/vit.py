"""Vision Transformer (Dosovitskiy et al., ICLR 2021) as torchvision's `vit_b_16`.

A `patch` x `patch` stride-`patch` convolution to `hidden` channels, the patches flattened
row-major, a learned class token in front, learned position embeddings added; `depth`
pre-LayerNorm encoder blocks (LayerNorm eps 1e-6 -> multi-head self-attention with one fused
q/k/v projection -> residual; LayerNorm -> Linear(`mlp`) -> exact GELU -> Linear -> residual);
a final LayerNorm; the class token is the penultimate feature and a linear head classifies
it. ImageNet normalisation inside, so inputs are [0, 1] pixels of `image_size` squared.
`vit_b_16`: 224x224, patch 16, hidden 768, 12 blocks of 12 heads, MLP 3072 (86.6M parameters
with 1000 classes). Dropout is 0 as in torchvision's weights, so eval and train agree.

Intermediates (`sow` and `perturb`): encoder_layer_<i>/ln_2_out (block i's second layer norm, read by
NAC-UE), block<i> (the token sequence after block i, i = 0-based)
and features (the class token after the final LayerNorm; NAC-UE's `layer_norm` layer).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from ncg_jax.models.layers import normalize
from ncg_jax.models.resnet import IMAGENET_MEAN, IMAGENET_STD


class SelfAttention(nn.Module):
  heads: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x_BxTxD):
    b, t, d = x_BxTxD.shape
    qkv = nn.Dense(3 * d, dtype=self.dtype, name="in_proj")(x_BxTxD)
    # heads made the leading batch axis before the products: XLA:CPU's fused attention ran
    # ViT-B/16's forward 0.88x the time of the per-token layout ("bqhd,bkhd->bhqk"), logits
    # within 2e-6 (batch 4, the 2-core Intel VM, `benchmarks/RESULTS.md`)
    q, k, v = (a.reshape(b, t, self.heads, d // self.heads).transpose(0, 2, 1, 3)
               for a in jnp.split(qkv, 3, axis=-1))
    logits_BxHxTxT = jnp.einsum("bhqd,bhkd->bhqk", q, k) / jnp.sqrt(d // self.heads).astype(self.dtype)
    attn = jax.nn.softmax(logits_BxHxTxT.astype(jnp.float32), axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bhkd->bhqd", attn, v).transpose(0, 2, 1, 3).reshape(b, t, d)
    return nn.Dense(d, dtype=self.dtype, name="out_proj")(out)


class EncoderBlock(nn.Module):
  heads: int
  mlp: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x):
    ln = lambda name: nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name=name)
    x = x + SelfAttention(self.heads, self.dtype, name="self_attention")(ln("ln_1")(x))
    normed = self.perturb("ln_2_out", ln("ln_2")(x))  # NAC-UE's ViT layers read this output
    self.sow("intermediates", "ln_2_out", normed)
    y = nn.Dense(self.mlp, dtype=self.dtype, name="mlp_1")(normed)
    y = nn.Dense(x.shape[-1], dtype=self.dtype, name="mlp_2")(nn.gelu(y, approximate=False))
    return x + y


class ViT(nn.Module):
  num_classes: int
  image_size: int = 224
  patch: int = 16
  hidden: int = 768
  depth: int = 12
  heads: int = 12
  mlp: int = 3072
  mean: tuple[float, ...] = IMAGENET_MEAN
  std: tuple[float, ...] = IMAGENET_STD
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no dropout, no batch statistics
    if x.shape[1:3] != (self.image_size, self.image_size):
      raise ValueError(f"ViT built for {self.image_size}x{self.image_size} inputs, got "
                       f"{x.shape[1]}x{x.shape[2]}")
    x = normalize(x.astype(self.dtype), self.mean, self.std)
    x = nn.Conv(self.hidden, (self.patch, self.patch), (self.patch, self.patch), padding="VALID",
                dtype=self.dtype, name="conv_proj")(x)
    b = x.shape[0]
    x = x.reshape(b, -1, self.hidden)
    cls = self.param("class_token", nn.initializers.zeros, (1, 1, self.hidden))
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (b, 1, self.hidden)), x], axis=1)
    pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, x.shape[1], self.hidden))
    x = x + pos.astype(self.dtype)
    for i in range(self.depth):
      x = EncoderBlock(self.heads, self.mlp, self.dtype, name=f"encoder_layer_{i}")(x)
      x = self.perturb(f"block{i}", x)
      self.sow("intermediates", f"block{i}", x)
    x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="ln")(x)
    feats = self.perturb("features", x[:, 0])
    self.sow("intermediates", "features", feats)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(feats)
    return logits.astype(jnp.float32), feats.astype(jnp.float32)


def vit_b_16(num_classes: int, **kw) -> ViT:
  return ViT(num_classes, **kw)
