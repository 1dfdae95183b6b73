"""ResNets (He et al., CVPR 2016): `resnet18` for 32x32 inputs and `resnet50` for ImageNet.

`resnet18` is OpenOOD v1.5's `ResNet18_32x32`: a 3x3 stride-1 stem without max-pooling, basic
blocks [2, 2, 2, 2] of widths 64/128/256/512, global average pooling, a linear head (about
11.2M parameters); OpenOOD feeds it CIFAR-normalised images, so the normalisation with the
CIFAR-10 statistics (0.4914, 0.4822, 0.4465) / (0.2470, 0.2435, 0.2616) is inside the model.

`resnet50` is torchvision's ResNet-50 (v1.5: the stride sits in the bottleneck's 3x3
convolution): 7x7 stride-2 stem, 3x3 stride-2 max-pool, bottlenecks [3, 4, 6, 3] with
expansion 4, a 2048-d head input (about 23.7M parameters with 100 classes). As the NCG
paper's `ResNet50Norm01` it normalises [0, 1] inputs with the ImageNet mean and std inside.

`resnet18_224` is torchvision's ResNet-18 (= OpenOOD v1.5's `ResNet18_224x224`, ImageNet-200):
the ImageNet stem with basic blocks, ImageNet normalisation inside. `resnet50_cifar` is the
MadryLab robustness library's CIFAR ResNet-50 (`cifar_models/resnet.py`): the 3x3 stride-1
stem without max-pooling and bottlenecks [3, 4, 6, 3], with that library's CIFAR-10
normaliser inside.

Intermediates (`sow` and `perturb`): layer1..layer4 and features (the pooled head input).
"""
import flax.linen as nn
import jax.numpy as jnp

from ncg_jax.models.layers import batch_norm, conv, normalize

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# the MadryLab robustness library's CIFAR-10 normaliser (`datasets.py`)
ROBUSTNESS_CIFAR_MEAN, ROBUSTNESS_CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


class BasicBlock(nn.Module):
  width: int
  stride: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x, train: bool):
    y = nn.relu(batch_norm(train, self.dtype, "bn1")(
        conv(self.width, 3, self.stride, self.dtype, "conv1")(x)))
    y = batch_norm(train, self.dtype, "bn2")(conv(self.width, 3, 1, self.dtype, "conv2")(y))
    if self.stride != 1 or x.shape[-1] != self.width:
      x = batch_norm(train, self.dtype, "shortcut_bn")(
          conv(self.width, 1, self.stride, self.dtype, "shortcut")(x))
    return nn.relu(x + y)


class Bottleneck(nn.Module):
  width: int
  stride: int
  dtype: jnp.dtype
  expansion: int = 4

  @nn.compact
  def __call__(self, x, train: bool):
    out = self.width * self.expansion
    y = nn.relu(batch_norm(train, self.dtype, "bn1")(conv(self.width, 1, 1, self.dtype, "conv1")(x)))
    y = nn.relu(batch_norm(train, self.dtype, "bn2")(
        conv(self.width, 3, self.stride, self.dtype, "conv2")(y)))
    y = batch_norm(train, self.dtype, "bn3")(conv(out, 1, 1, self.dtype, "conv3")(y))
    if self.stride != 1 or x.shape[-1] != out:
      x = batch_norm(train, self.dtype, "shortcut_bn")(
          conv(out, 1, self.stride, self.dtype, "shortcut")(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  num_classes: int
  block: type = BasicBlock
  stages: tuple[int, ...] = (2, 2, 2, 2)
  imagenet_stem: bool = False  # 7x7/2 conv + 3x3/2 max-pool (else one 3x3/1 conv)
  mean: tuple[float, ...] = CIFAR10_MEAN
  std: tuple[float, ...] = CIFAR10_STD
  width: int = 64  # stage widths width * (1, 2, 4, 8); reduced only in tests
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = normalize(x.astype(self.dtype), self.mean, self.std)
    if self.imagenet_stem:
      x = nn.relu(batch_norm(train, self.dtype, "bn_stem")(
          conv(self.width, 7, 2, self.dtype, "stem")(x)))
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    else:
      x = nn.relu(batch_norm(train, self.dtype, "bn_stem")(
          conv(self.width, 3, 1, self.dtype, "stem")(x)))
    for i, n in enumerate(self.stages):
      for j in range(n):
        stride = 2 if i > 0 and j == 0 else 1
        x = self.block(self.width * 2 ** i, stride, self.dtype, name=f"layer{i + 1}_{j}")(x, train)
      x = self.perturb(f"layer{i + 1}", x)
      self.sow("intermediates", f"layer{i + 1}", x)
    feats = self.perturb("features", jnp.mean(x, axis=(1, 2)))
    self.sow("intermediates", "features", feats)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(feats)
    return logits.astype(jnp.float32), feats.astype(jnp.float32)


def _resnet(num_classes: int, kw: dict, **defaults) -> ResNet:
  return ResNet(num_classes, **{**defaults, **kw})


def resnet18(num_classes: int, **kw) -> ResNet:
  return _resnet(num_classes, kw, block=BasicBlock, stages=(2, 2, 2, 2))


def resnet18_224(num_classes: int, **kw) -> ResNet:
  return _resnet(num_classes, kw, block=BasicBlock, stages=(2, 2, 2, 2), imagenet_stem=True,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD)


def resnet50(num_classes: int, **kw) -> ResNet:
  return _resnet(num_classes, kw, block=Bottleneck, stages=(3, 4, 6, 3), imagenet_stem=True,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD)


def resnet50_cifar(num_classes: int, **kw) -> ResNet:
  return _resnet(num_classes, kw, block=Bottleneck, stages=(3, 4, 6, 3),
                 mean=ROBUSTNESS_CIFAR_MEAN, std=ROBUSTNESS_CIFAR_STD)
