"""PyTorch twins of the architectures ncg_jax imports, written for the tests with each source's
exact state-dict keys (torchvision itself does not load beside the CPU torch build here).
Each `forward` takes [0, 1] NCHW images, normalises them as the source does, and returns
(logits, penultimate features)."""
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def randomize(model: nn.Module, seed: int = 0, head_scale: float = 1.0) -> nn.Module:
  """Random weights and random normalisation statistics, so a wrong key or layout shows."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim >= 2:
        fan_in = p[0].numel()
        p.copy_(torch.randn(p.shape, generator=g) * (1.0 / fan_in) ** 0.5)
      else:
        p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if name.endswith("weight") else 0.0))
    for name, b in model.named_buffers():
      if name.endswith("running_mean"):
        b.copy_(torch.randn(b.shape, generator=g) * 0.1)
      elif name.endswith("running_var"):
        b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    for m in model.modules():  # keep logits O(1)
      if isinstance(m, nn.Linear) and m.out_features < 1000 and head_scale != 1.0:
        m.weight.mul_(head_scale)
  return model.eval()


def _norm(x, mean, std):
  mean = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
  std = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
  return (x - mean) / std


IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
ODIN = ((125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255))


# --- torchvision ResNet (also OpenOOD's ResNet18_224x224 and lolip's ResNet50Norm01) ------

class TvBasic(nn.Module):
  expansion = 1

  def __init__(self, cin, w, stride, down):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, w, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(w)
    self.conv2 = nn.Conv2d(w, w, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(w)
    self.downsample = down

  def forward(self, x):
    y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


class TvBottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin, w, stride, down):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, w, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(w)
    self.conv2 = nn.Conv2d(w, w, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(w)
    self.conv3 = nn.Conv2d(w, 4 * w, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(4 * w)
    self.downsample = down

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


class TvResNet(nn.Module):
  def __init__(self, block, stages, num_classes, width=64, stats=IMAGENET):
    super().__init__()
    self.stats = stats
    self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    cin = width
    for i, n in enumerate(stages):
      layers = []
      for j in range(n):
        w, stride = width * 2 ** i, (2 if i > 0 and j == 0 else 1)
        down = None
        if stride != 1 or cin != w * block.expansion:
          down = nn.Sequential(nn.Conv2d(cin, w * block.expansion, 1, stride, bias=False),
                               nn.BatchNorm2d(w * block.expansion))
        layers.append(block(cin, w, stride, down))
        cin = w * block.expansion
      setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
    self.n = len(stages)
    self.fc = nn.Linear(cin, num_classes)

  def forward(self, x):
    x = self.maxpool(F.relu(self.bn1(self.conv1(_norm(x, *self.stats)))))
    for i in range(self.n):
      x = getattr(self, f"layer{i + 1}")(x)
    h = x.mean((2, 3))
    return self.fc(h), h


# --- CIFAR ResNets with `shortcut` (OpenOOD ResNet18_32x32; robustness library) ----------

class CifarBlock(nn.Module):
  def __init__(self, cin, w, stride, bottleneck):
    super().__init__()
    self.bottleneck = bottleneck
    out = 4 * w if bottleneck else w
    if bottleneck:
      self.conv1 = nn.Conv2d(cin, w, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(w)
      self.conv2 = nn.Conv2d(w, w, 3, stride, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(w)
      self.conv3 = nn.Conv2d(w, out, 1, bias=False)
      self.bn3 = nn.BatchNorm2d(out)
    else:
      self.conv1 = nn.Conv2d(cin, w, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(w)
      self.conv2 = nn.Conv2d(w, w, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(w)
    self.shortcut = nn.Sequential()
    if stride != 1 or cin != out:
      self.shortcut = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    if self.bottleneck:
      y = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(y)))))
    else:
      y = self.bn2(self.conv2(y))
    return F.relu(y + self.shortcut(x))


class CifarResNet(nn.Module):
  def __init__(self, stages, num_classes, width=64, bottleneck=False, head="fc", stats=CIFAR10):
    super().__init__()
    self.stats, self.head = stats, head
    self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    cin = width
    for i, n in enumerate(stages):
      layers = []
      for j in range(n):
        w = width * 2 ** i
        layers.append(CifarBlock(cin, w, 2 if i > 0 and j == 0 else 1, bottleneck))
        cin = 4 * w if bottleneck else w
      setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
    self.n = len(stages)
    setattr(self, head, nn.Linear(cin, num_classes))

  def forward(self, x):
    if self.stats is not None:
      x = _norm(x, *self.stats)
    x = F.relu(self.bn1(self.conv1(x)))
    for i in range(self.n):
      x = getattr(self, f"layer{i + 1}")(x)
    h = x.mean((2, 3))
    return getattr(self, self.head)(h), h


class InputNormalize(nn.Module):
  def __init__(self, mean, std):
    super().__init__()
    self.register_buffer("new_mean", torch.tensor(mean).view(3, 1, 1))
    self.register_buffer("new_std", torch.tensor(std).view(3, 1, 1))

  def forward(self, x):
    return (x - self.new_mean) / self.new_std


class Attacker(nn.Module):
  def __init__(self, model, normalize):
    super().__init__()
    self.model, self.normalize = model, normalize


class RobustnessModel(nn.Module):
  """The robustness library's AttackerModel: normalizer + model + attacker (sharing them)."""
  def __init__(self, model, mean, std):
    super().__init__()
    self.normalizer = InputNormalize(mean, std)
    self.model = model
    self.attacker = Attacker(self.model, self.normalizer)

  def forward(self, x):
    return self.model(self.normalizer(x))


# --- pre-activation WRN (ODIN and lolip) and DenseNet-BC (ODIN) --------------------------

class WrnBlock(nn.Module):
  def __init__(self, cin, cout, stride):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(cin)
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.equal = cin == cout
    self.convShortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

  def forward(self, x):
    o = F.relu(self.bn1(x))
    y = self.conv2(F.relu(self.bn2(self.conv1(o))))
    return (x if self.equal else self.convShortcut(o)) + y


class NetworkBlock(nn.Module):
  def __init__(self, n, cin, cout, stride):
    super().__init__()
    self.layer = nn.Sequential(*[WrnBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                 for i in range(n)])

  def forward(self, x):
    return self.layer(x)


class WideResNet(nn.Module):
  def __init__(self, depth, widen, num_classes, stats=None):
    super().__init__()
    n, ch = (depth - 4) // 6, [16, 16 * widen, 32 * widen, 64 * widen]
    self.stats = stats
    self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
    self.block1 = NetworkBlock(n, ch[0], ch[1], 1)
    self.block2 = NetworkBlock(n, ch[1], ch[2], 2)
    self.block3 = NetworkBlock(n, ch[2], ch[3], 2)
    self.bn1 = nn.BatchNorm2d(ch[3])
    self.fc = nn.Linear(ch[3], num_classes)

  def forward(self, x):
    if self.stats is not None:
      x = _norm(x, *self.stats)
    x = self.block3(self.block2(self.block1(self.conv1(x))))
    h = F.relu(self.bn1(x)).mean((2, 3))
    return self.fc(h), h


class DenseLayer(nn.Module):
  def __init__(self, cin, growth):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(cin)
    self.conv1 = nn.Conv2d(cin, 4 * growth, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(4 * growth)
    self.conv2 = nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False)

  def forward(self, x):
    y = self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
    return torch.cat([x, y], 1)


class DenseBlock(nn.Module):
  def __init__(self, n, cin, growth):
    super().__init__()
    self.layer = nn.Sequential(*[DenseLayer(cin + i * growth, growth) for i in range(n)])

  def forward(self, x):
    return self.layer(x)


class Transition(nn.Module):
  def __init__(self, cin, cout):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(cin)
    self.conv1 = nn.Conv2d(cin, cout, 1, bias=False)

  def forward(self, x):
    return F.avg_pool2d(self.conv1(F.relu(self.bn1(x))), 2)


class DenseNet3(nn.Module):
  def __init__(self, depth, growth, num_classes):
    super().__init__()
    n, c = (depth - 4) // 6, 2 * growth
    self.conv1 = nn.Conv2d(3, c, 3, 1, 1, bias=False)
    self.block1 = DenseBlock(n, c, growth)
    c += n * growth
    self.trans1 = Transition(c, c // 2)
    c //= 2
    self.block2 = DenseBlock(n, c, growth)
    c += n * growth
    self.trans2 = Transition(c, c // 2)
    c //= 2
    self.block3 = DenseBlock(n, c, growth)
    c += n * growth
    self.bn1 = nn.BatchNorm2d(c)
    self.fc = nn.Linear(c, num_classes)

  def forward(self, x):
    x = self.conv1(_norm(x, *ODIN))
    x = self.block3(self.trans2(self.block2(self.trans1(self.block1(x)))))
    h = F.relu(self.bn1(x)).mean((2, 3))
    return self.fc(h), h


# --- lolip's CNN002 -----------------------------------------------------------------------

class CNN002(nn.Module):
  def __init__(self, num_classes):
    super().__init__()
    self.feature_extractor = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, 32, 3)), ("relu1", nn.ReLU()), ("conv2", nn.Conv2d(32, 32, 3)),
        ("relu2", nn.ReLU()), ("maxpool1", nn.MaxPool2d(2, 2)), ("conv3", nn.Conv2d(32, 64, 3)),
        ("relu3", nn.ReLU()), ("conv4", nn.Conv2d(64, 64, 3)), ("relu4", nn.ReLU()),
        ("maxpool2", nn.MaxPool2d(2, 2))]))
    self.classifier = nn.Sequential(OrderedDict([
        ("fc1", nn.Linear(1024, 200)), ("relu1", nn.ReLU()), ("drop", nn.Dropout(0.5)),
        ("fc2", nn.Linear(200, 200)), ("relu2", nn.ReLU()), ("fc3", nn.Linear(200, num_classes))]))

  def forward(self, x):
    f = self.feature_extractor(x).view(-1, 1024)
    h = self.classifier.relu2(self.classifier.fc2(self.classifier.relu1(self.classifier.fc1(f))))
    return self.classifier.fc3(h), h


# --- torchvision ViT ----------------------------------------------------------------------

class EncoderBlock(nn.Module):
  def __init__(self, hidden, heads, mlp):
    super().__init__()
    self.ln_1 = nn.LayerNorm(hidden, eps=1e-6)
    self.self_attention = nn.MultiheadAttention(hidden, heads, batch_first=True)
    self.ln_2 = nn.LayerNorm(hidden, eps=1e-6)
    self.mlp = nn.Sequential(nn.Linear(hidden, mlp), nn.GELU(), nn.Dropout(0.0),
                             nn.Linear(mlp, hidden), nn.Dropout(0.0))

  def forward(self, x):
    y = self.ln_1(x)
    x = x + self.self_attention(y, y, y, need_weights=False)[0]
    return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
  def __init__(self, seq, hidden, depth, heads, mlp):
    super().__init__()
    self.pos_embedding = nn.Parameter(torch.zeros(1, seq, hidden))
    self.layers = nn.Sequential(OrderedDict(
        [(f"encoder_layer_{i}", EncoderBlock(hidden, heads, mlp)) for i in range(depth)]))
    self.ln = nn.LayerNorm(hidden, eps=1e-6)


class ViT(nn.Module):
  def __init__(self, image_size, patch, hidden, depth, heads, mlp, num_classes):
    super().__init__()
    self.conv_proj = nn.Conv2d(3, hidden, patch, patch)
    self.class_token = nn.Parameter(torch.zeros(1, 1, hidden))
    self.encoder = Encoder((image_size // patch) ** 2 + 1, hidden, depth, heads, mlp)
    self.heads = nn.Sequential(OrderedDict([("head", nn.Linear(hidden, num_classes))]))

  def forward(self, x):
    x = self.conv_proj(_norm(x, *IMAGENET))
    n, c = x.shape[:2]
    x = x.reshape(n, c, -1).permute(0, 2, 1)
    x = torch.cat([self.class_token.expand(n, -1, -1), x], 1) + self.encoder.pos_embedding
    x = self.encoder.ln(self.encoder.layers(x))
    h = x[:, 0]
    return self.heads(h), h


# --- BiT ResNet-v2 (GradNorm's PyTorch port layout) ---------------------------------------

class StdConv2d(nn.Conv2d):
  def forward(self, x):
    v, m = torch.var_mean(self.weight, dim=[1, 2, 3], keepdim=True, unbiased=False)
    w = (self.weight - m) / torch.sqrt(v + 1e-10)
    return F.conv2d(x, w, self.bias, self.stride, self.padding)


class PreActUnit(nn.Module):
  def __init__(self, cin, cout, cmid, stride):
    super().__init__()
    self.gn1 = nn.GroupNorm(32, cin)
    self.conv1 = StdConv2d(cin, cmid, 1, bias=False)
    self.gn2 = nn.GroupNorm(32, cmid)
    self.conv2 = StdConv2d(cmid, cmid, 3, stride, 1, bias=False)
    self.gn3 = nn.GroupNorm(32, cmid)
    self.conv3 = StdConv2d(cmid, cout, 1, bias=False)
    if stride != 1 or cin != cout:
      self.downsample = StdConv2d(cin, cout, 1, stride, bias=False)

  def forward(self, x):
    out = F.relu(self.gn1(x))
    residual = self.downsample(out) if hasattr(self, "downsample") else x
    out = self.conv1(out)
    out = self.conv2(F.relu(self.gn2(out)))
    out = self.conv3(F.relu(self.gn3(out)))
    return out + residual


class ResNetV2(nn.Module):
  def __init__(self, units, width, num_classes):
    super().__init__()
    self.root = nn.Sequential(OrderedDict([("conv", StdConv2d(3, width, 7, 2, 3, bias=False)),
                                           ("pad", nn.ConstantPad2d(1, 0)),
                                           ("pool", nn.MaxPool2d(3, 2, 0))]))
    blocks, cin = [], width
    for b, n in enumerate(units):
      cmid, cout = width * 2 ** b, 4 * width * 2 ** b
      blocks.append((f"block{b + 1}", nn.Sequential(OrderedDict(
          [(f"unit{u + 1:02d}", PreActUnit(cin if u == 0 else cout, cout, cmid,
                                           2 if b > 0 and u == 0 else 1)) for u in range(n)]))))
      cin = cout
    self.body = nn.Sequential(OrderedDict(blocks))
    self.before_head = nn.Sequential(OrderedDict([("gn", nn.GroupNorm(32, cin))]))
    self.head = nn.Sequential(OrderedDict([("conv", nn.Conv2d(cin, num_classes, 1, bias=True))]))

  def forward(self, x):
    x = self.body(self.root(_norm(x, (0.5,) * 3, (0.5,) * 3)))
    h = F.relu(self.before_head.gn(x)).mean((2, 3), keepdim=True)
    return self.head.conv(h)[..., 0, 0], h[..., 0, 0]


def bit_npz(model: ResNetV2) -> dict[str, np.ndarray]:
  """The twin's weights under BiT's own .npz names and TensorFlow layouts (HWIO kernels)."""
  out = {}
  tf = lambda t: t.detach().numpy().transpose(2, 3, 1, 0) if t.ndim == 4 else t.detach().numpy()
  sd = model.state_dict()
  out["resnet/root_block/standardized_conv2d/kernel"] = tf(sd["root.conv.weight"])
  for key, t in sd.items():
    if not key.startswith("body."):
      continue
    _, block, unit, layer, leaf = key.split(".")
    sub = {"gn1": "a/group_norm", "gn2": "b/group_norm", "gn3": "c/group_norm",
           "conv1": "a/standardized_conv2d", "conv2": "b/standardized_conv2d",
           "conv3": "c/standardized_conv2d", "downsample": "a/proj/standardized_conv2d"}[layer]
    name = {"weight": "gamma" if "group_norm" in sub else "kernel", "bias": "beta"}[leaf]
    out[f"resnet/{block}/{unit}/{sub}/{name}"] = tf(t)
  out["resnet/group_norm/gamma"] = tf(sd["before_head.gn.weight"])
  out["resnet/group_norm/beta"] = tf(sd["before_head.gn.bias"])
  out["resnet/head/conv2d/kernel"] = tf(sd["head.conv.weight"])
  out["resnet/head/conv2d/bias"] = tf(sd["head.conv.bias"])
  return out
