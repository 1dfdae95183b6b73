"""Pretrained classifiers from PyTorch and BiT checkpoints, as ordinary `Trained` models
(`ncg_jax.models.import_weights`; the command is `ncg_jax/models/import_weights.py`).

    trained = import_weights("resnet50", "resnet50.pth", source="torchvision")
    python -m ncg_jax.models.import_weights --arch=resnet50 --source=torchvision \\
        --checkpoint=resnet50.pth --dataset=imagenet [--workdir=DIR] [--name=RUN]

The command writes an ordinary run directory (orbax checkpoint and a `config.json` that
records the import: source, file, its sha256, the architecture's fields and input shape),
which `experiments.ncg`, `.detect`, `.robustness` and `.corrupted` use by run name.

Files are read as plain tensors only: `torch.load(..., weights_only=True)`, `.safetensors`,
or `.npz` without pickle. Each source maps the checkpoint's key layout onto the Linen
module's variables with a list of regular-expression rules (flax path -> checkpoint key)
and converts layouts (PyTorch OIHW convolutions -> HWIO, Linear (out, in) -> (in, out)).
A checkpoint that does not fit is an error naming the first mismatching key with both
shapes and listing missing and unexpected keys. Input normalisation stays inside the model
with the source's own statistics, so attacks and distances remain in [0, 1] pixel units.

Sources and their key layouts (`SOURCES`):
  torchvision  resnet18_224, resnet50, vit_b_16 (torchvision's state dicts; ViT's older
               `mlp.linear_1/2` names are read too)
  openood      resnet18 (OpenOOD v1.5 `ResNet18_32x32`: CIFAR-10 statistics, or CIFAR-100's
               for 100 classes) and resnet18_224 (`ResNet18_224x224`, torchvision's keys)
  odin         densenet_bc_100_12 and wrn_28_10 of the ODIN repository (ODIN's statistics).
               Its files are pickled modules: they are refused with the one-line PyTorch
               snippet that saves their state dict.
  bit          bit_{s,m}_r<depth>x<width> from BiT's `.npz` files (TensorFlow names and
               layouts) or from the PyTorch port's state dict (GradNorm's checkpoint)
  robustness   resnet50_cifar of the MadryLab robustness library (`module.model.` keys; the
               normaliser's mean and std are read from the checkpoint)
  lolip        the NCG paper code's cnn002, wrn_40_10 and resnet50 (`ResNet50Norm01`, 112x112)
"""
import dataclasses
import hashlib
import os
import re
import sys
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ncg_jax import models
from ncg_jax.models.densenet import ODIN_MEAN, ODIN_STD
from ncg_jax.models.trained import Trained
from ncg_jax.registry import ConfigError

CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)  # OpenOOD's

# PyTorch leaf names of Linen leaves (BatchNorm running statistics live in 'batch_stats').
_TORCH_LEAVES = [(r"/kernel$", ".weight"), (r"/scale$", ".weight"), (r"/bias$", ".bias"),
                 (r"/mean$", ".running_mean"), (r"/var$", ".running_var"), (r"/", ".")]


def _resnet_rules(shortcut: str, head: str) -> list:
  return [(r"^stem/", "conv1/"), (r"^bn_stem/", "bn1/"),
          (r"^layer(\d)_(\d+)/shortcut/", rf"layer\1.\2.{shortcut}.0/"),
          (r"^layer(\d)_(\d+)/shortcut_bn/", rf"layer\1.\2.{shortcut}.1/"),
          (r"^layer(\d)_(\d+)/", r"layer\1.\2/"), (r"^head/", f"{head}/")] + _TORCH_LEAVES


WRN_RULES = [(r"^stem/", "conv1/"), (r"^stage(\d)_(\d+)/shortcut/", r"block\1.layer.\2.convShortcut/"),
             (r"^stage(\d)_(\d+)/", r"block\1.layer.\2/"), (r"^bn_final/", "bn1/"),
             (r"^head/", "fc/")] + _TORCH_LEAVES
DENSENET_RULES = [(r"^stem/", "conv1/"), (r"^block(\d)_(\d+)_(bn|conv)(\d)/", r"block\1.layer.\2.\3\4/"),
                  (r"^transition(\d)_bn/", r"trans\1.bn1/"), (r"^transition(\d)/", r"trans\1.conv1/"),
                  (r"^bn_final/", "bn1/"), (r"^head/", "fc/")] + _TORCH_LEAVES
CNN002_RULES = [(r"^conv(\d)/", r"feature_extractor.conv\1/"), (r"^fc(\d)/", r"classifier.fc\1/"),
                (r"^head/", "classifier.fc3/")] + _TORCH_LEAVES
VIT_RULES = [(r"^pos_embedding$", "encoder/pos_embedding"),
             (r"^encoder_layer_(\d+)/", r"encoder.layers.encoder_layer_\1/"),
             (r"/self_attention/in_proj/kernel$", "/self_attention/in_proj_weight"),
             (r"/self_attention/in_proj/bias$", "/self_attention/in_proj_bias"),
             (r"/mlp_1/", "/mlp.0/"), (r"/mlp_2/", "/mlp.3/"), (r"^ln/", "encoder.ln/"),
             (r"^head/", "heads.head/")] + _TORCH_LEAVES
BIT_TORCH_RULES = [(r"^root_conv/", "root.conv/"), (r"^block(\d)_unit(\d+)/", r"body.block\1.unit\2/"),
                   (r"^head_gn/", "before_head.gn/"), (r"^head/", "head.conv/")] + _TORCH_LEAVES
BIT_NPZ_RULES = [(r"^root_conv/", "resnet/root_block/standardized_conv2d/"),
                 (r"^block(\d)_unit(\d+)/", r"resnet/block\1/unit\2/"),
                 (r"/gn1/", "/a/group_norm/"), (r"/gn2/", "/b/group_norm/"), (r"/gn3/", "/c/group_norm/"),
                 (r"/conv1/", "/a/standardized_conv2d/"), (r"/conv2/", "/b/standardized_conv2d/"),
                 (r"/conv3/", "/c/standardized_conv2d/"), (r"/downsample/", "/a/proj/standardized_conv2d/"),
                 (r"^head_gn/", "resnet/group_norm/"), (r"^head/", "resnet/head/conv2d/"),
                 (r"group_norm/scale$", "group_norm/gamma"), (r"group_norm/bias$", "group_norm/beta")]


@dataclasses.dataclass(frozen=True)
class Layout:
  """How one source's checkpoint names and lays out one architecture family."""
  rules: list  # (regex, replacement) applied in order to 'module/path/leaf' of each variable
  torch: bool = True  # PyTorch array layouts (else TensorFlow's: HWIO kernels as Linen's)
  fields: dict = dataclasses.field(default_factory=dict)  # architecture fields (normalisation)
  input_size: int = 32
  channels: int = 3
  key_rules: list = dataclasses.field(default_factory=list)  # checkpoint key aliases
  ignore: tuple[str, ...] = ()  # checkpoint key prefixes that are not model weights
  transforms: dict = dataclasses.field(default_factory=dict)  # flax path -> array transform
  stats_keys: tuple[str, str] | None = None  # checkpoint keys holding (mean, std)
  class_fields: dict = dataclasses.field(default_factory=dict)  # class count -> fields


def _chw_flatten_dense(c: int, h: int, w: int) -> Callable:
  """A Linear after PyTorch's channel-major flatten of a CxHxW map -> a Dense after the
  channel-last flatten of the same map (HxWxC)."""
  return lambda a: a.reshape(a.shape[0], c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, -1)


ODIN_FIELDS = {"mean": ODIN_MEAN, "std": ODIN_STD}
SOURCES: dict[str, dict[str, Layout]] = {
    "torchvision": {
        r"resnet18_224|resnet50": Layout(_resnet_rules("downsample", "fc"), input_size=224),
        r"vit_b_16": Layout(VIT_RULES, input_size=224,
                            key_rules=[(r"\.mlp\.linear_1\.", ".mlp.0."), (r"\.mlp\.linear_2\.", ".mlp.3.")]),
    },
    "openood": {
        r"resnet18": Layout(_resnet_rules("shortcut", "fc"), class_fields={
            100: {"mean": CIFAR100_MEAN, "std": CIFAR100_STD}}),
        r"resnet18_224": Layout(_resnet_rules("downsample", "fc"), input_size=224),
    },
    "odin": {
        r"densenet_bc_\d+_\d+": Layout(DENSENET_RULES, fields=ODIN_FIELDS),
        r"wrn_\d+_\d+": Layout(WRN_RULES, fields=ODIN_FIELDS),
    },
    "bit": {
        r"bit_[sm]_r\d+x\d+": Layout(BIT_TORCH_RULES, input_size=224,
                                     key_rules=[(r"^head\.gn\.", "before_head.gn.")]),
        r"bit_[sm]_r\d+x\d+@npz": Layout(BIT_NPZ_RULES, torch=False, input_size=224),
    },
    "robustness": {
        r"resnet50_cifar": Layout(_resnet_rules("shortcut", "linear"), key_rules=[(r"^model\.", "")],
                                  ignore=("attacker.",), stats_keys=("normalizer.new_mean",
                                                                     "normalizer.new_std")),
    },
    "lolip": {
        r"cnn002": Layout(CNN002_RULES, input_size=28, channels=1,
                          transforms={"params/fc1/kernel": _chw_flatten_dense(64, 4, 4)}),
        r"wrn_\d+_\d+": Layout(WRN_RULES),
        r"resnet50": Layout(_resnet_rules("downsample", "fc"), input_size=112),
    },
}


def layout(source: str, arch: str, path: str = "") -> Layout:
  if source not in SOURCES:
    raise ConfigError(f"unknown source '{source}'; valid: {', '.join(SOURCES)}")
  key = arch + ("@npz" if path.endswith(".npz") and source == "bit" else "")
  for pattern, lay in SOURCES[source].items():
    if re.fullmatch(pattern, key):
      return lay
  archs = sorted({p.replace("@npz", "") for p in SOURCES[source]})
  raise ConfigError(f"source '{source}' has no layout for --arch={arch}; its architectures: "
                    f"{', '.join(archs)}")


# --- reading files -----------------------------------------------------------------------

_CONTAINERS = ("state_dict", "model_state_dict", "model", "net", "state")


def pickled_module_error(path: str) -> ConfigError:
  name = os.path.splitext(os.path.basename(path))[0]
  return ConfigError(
      f"{path} holds pickled Python objects (a whole model, as ODIN ships, or objects beside "
      "its tensors), which are not unpickled here; save its state dict once where its model "
      "code is importable (for ODIN: its code/ folder): python -c \"import torch; "
      f"torch.save(torch.load('{path}', weights_only=False).state_dict(), "
      f"'{name}_state_dict.pth')\" and import that file")


def read_checkpoint(path: str) -> dict[str, np.ndarray]:
  """{key: float32 array} of a PyTorch, safetensors or npz checkpoint, never unpickling
  arbitrary objects. Common containers ({'state_dict': ...}, {'model': ...}) are unwrapped
  and a `module.` (DataParallel) prefix on every key is dropped."""
  if not os.path.isfile(path):
    raise ConfigError(f"no checkpoint file at {path}")
  if path.endswith(".npz"):
    try:
      with np.load(path, allow_pickle=False) as f:
        return {k: np.asarray(f[k], np.float32) for k in f.files}
    except ValueError as e:
      raise ConfigError(f"{path} is not a numeric .npz archive ({e})") from None
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file
    return {k: v.astype(np.float32) for k, v in load_file(path).items()}
  import torch
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:
    if type(e).__name__ == "UnpicklingError":  # weights_only refused an object
      raise pickled_module_error(path) from None
    raise ConfigError(f"cannot read {path} as a PyTorch checkpoint: {type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''}") from None
  while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
    inner = [k for k in _CONTAINERS if isinstance(obj.get(k), dict)]
    if not inner:
      raise ConfigError(f"{path} holds no tensors at its top level and none of the containers "
                        f"{', '.join(_CONTAINERS)}; keys: {', '.join(map(str, list(obj)[:8]))}")
    obj = obj[inner[0]]
  if not isinstance(obj, dict):
    raise pickled_module_error(path)
  out = {k: v.detach().float().numpy() for k, v in obj.items() if isinstance(v, torch.Tensor)}
  if out and all(k.startswith("module.") for k in out):
    out = {k[len("module."):]: v for k, v in out.items()}
  return out


def sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


# --- mapping -----------------------------------------------------------------------------

def _key(path: str, rules: list) -> str:
  for pattern, repl in rules:
    path = re.sub(pattern, repl, path)
  return path


def _checkpoint_shape(shape: tuple, torch: bool) -> tuple:
  """A Linen leaf's shape as the checkpoint stores it (for error messages)."""
  if torch and len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if torch and len(shape) == 2:
    return shape[::-1]
  return shape


def _convert(a: np.ndarray, shape: tuple, torch: bool) -> np.ndarray:
  if torch and a.ndim == 4 and len(shape) == 4:
    a = a.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  elif torch and len(shape) == 2 and a.ndim in (2, 4) and a.size == np.prod(shape):
    a = a.reshape(a.shape[0], -1).T  # Linear (out, in) or a 1x1 convolution head
  return a.reshape(shape) if a.size == np.prod(shape) else a


def map_variables(template: dict, ckpt: dict[str, np.ndarray], lay: Layout, what: str) -> dict:
  """Fills `template` (Linen variables: params and batch_stats) from `ckpt` (keys already
  through `lay.key_rules`), or raises a ConfigError naming the first mismatching key and the
  missing and unexpected keys."""
  flat = traverse_util.flatten_dict(template, sep="/")
  out, used, missing, mismatched = {}, set(), [], []
  for path, leaf in flat.items():
    collection, rest = path.split("/", 1)
    key = _key(rest, lay.rules)
    if key not in ckpt:
      missing.append(key)
      continue
    used.add(key)
    transform = lay.transforms.get(path)
    a = transform(ckpt[key]) if transform else _convert(ckpt[key], leaf.shape, lay.torch)
    if a.shape != leaf.shape:
      mismatched.append(f"{key}: checkpoint {tuple(ckpt[key].shape)} vs model "
                        f"{tuple(_checkpoint_shape(leaf.shape, lay.torch))}")
      continue
    out[path] = jnp.asarray(a, leaf.dtype)
  unexpected = [k for k in ckpt if k not in used and not k.endswith("num_batches_tracked")
                and not k.startswith(lay.ignore) and k not in (lay.stats_keys or ())]
  if missing or mismatched or unexpected:
    parts = [f"the checkpoint does not fit {what}"]
    if mismatched:
      parts.append(f"first mismatching key {mismatched[0]}"
                   + (f" (+{len(mismatched) - 1} more)" if len(mismatched) > 1 else ""))
    for name, keys in (("missing", missing), ("unexpected", unexpected)):
      if keys:
        parts.append(f"{len(keys)} {name} keys: {', '.join(keys[:6])}" + (", ..." if len(keys) > 6 else ""))
    raise ConfigError("; ".join(parts))
  return traverse_util.unflatten_dict(out, sep="/")


def _head_classes(ckpt: dict, lay: Layout) -> int | None:
  """The class count the checkpoint's head was trained for."""
  key = _key("head/bias", lay.rules)
  return int(ckpt[key].shape[0]) if key in ckpt else None


def import_weights(arch: str, path: str, *, source: str, num_classes: int | None = None,
                   input_size: int | None = None, mean=None, std=None,
                   fields: dict | None = None, ckpt: dict | None = None) -> Trained:
  """A `Trained` model of architecture `arch` with the weights of the checkpoint at `path`.

  num_classes: the head's class count (default: read from the checkpoint).
  input_size: image height = width the model takes (default: the source's, e.g. 224).
  mean, std: input normalisation inside the model (default: the source's statistics).
  fields: other architecture fields (reduced widths of test twins).
  """
  models.MODELS.lookup(arch)
  lay = layout(source, arch, path)
  ckpt = read_checkpoint(path) if ckpt is None else ckpt
  ckpt = {_key(k, lay.key_rules): v for k, v in ckpt.items()}
  classes = _head_classes(ckpt, lay)
  if num_classes is None:
    if classes is None:
      raise ConfigError(f"cannot read the class count from {path}; pass num_classes")
    num_classes = classes
  fields = {**lay.fields, **lay.class_fields.get(num_classes, {}), **(fields or {})}
  if lay.stats_keys and all(k in ckpt for k in lay.stats_keys):
    fields["mean"], fields["std"] = (tuple(float(x) for x in ckpt[k].reshape(-1))
                                     for k in lay.stats_keys)
  if mean is not None:
    fields["mean"], fields["std"] = tuple(mean), tuple(std)
  size = input_size or fields.get("image_size") or lay.input_size
  if arch.startswith("vit"):
    fields["image_size"] = size
  model = models.create(arch, num_classes, **fields)
  shape = (size, size, lay.channels)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape))))
  template = {k: v for k, v in variables.items() if k in ("params", *models.STATE_COLLECTIONS)}
  filled = map_variables(template, ckpt, lay, f"{arch} ({source}) with {num_classes} classes")
  trained = Trained(model, filled["params"], {k: v for k, v in filled.items() if k != "params"},
                    shape)
  return trained


def record(trained: Trained, arch: str, path: str, source: str) -> dict:
  """What config.json says of an imported run."""
  return {"imported": True, "source": source, "checkpoint": os.path.abspath(path),
          "sha256": sha256(path), "arch": arch, "space": "pixel", "loss": None,
          "num_classes": int(trained.model.num_classes),
          "input_shape": list(trained.input_shape), "fields": models.fields_of(trained.model, arch)}


def define_flags() -> None:
  from absl import flags
  flags.DEFINE_string("arch", None, "Architecture (see ncg_jax.models).", required=True)
  flags.DEFINE_string("source", None, f"Checkpoint layout: {', '.join(SOURCES)}.", required=True)
  flags.DEFINE_string("checkpoint", None, "The checkpoint file (.pth/.pt, .safetensors, .npz).",
                      required=True)
  flags.DEFINE_string("dataset", None, "Dataset the run belongs to (its directory; its class "
                      "count is checked when ncg_jax knows the dataset).", required=True)
  flags.DEFINE_string("workdir", "workdir", "Where runs live.")
  flags.DEFINE_string("name", None, "Run name (default: <source>-<file stem>).")
  flags.DEFINE_integer("seed", 0, "The seed<s> directory the run is filed under.")
  flags.DEFINE_integer("num_classes", None, "Head classes (default: read from the checkpoint).")
  flags.DEFINE_integer("input_size", None, "Input height = width (default: the source's).")
  flags.DEFINE_list("mean", None, "Input normalisation mean per channel (default: the source's).")
  flags.DEFINE_list("std", None, "Input normalisation std per channel.")


def main(argv) -> None:
  """python -m ncg_jax.models.import_weights: one checkpoint -> one run directory. Bad input
  is one line on stderr and exit code 2."""
  del argv
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  try:
    _import_run()
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def _import_run() -> None:
  from absl import flags
  from ncg_jax import data, runs
  f = flags.FLAGS
  if (f.mean is None) != (f.std is None):
    raise ConfigError("pass --mean and --std together")
  mean, std = ([float(v) for v in vals] if vals else None for vals in (f.mean, f.std))
  name = f.name or f"{f.source}-{os.path.splitext(os.path.basename(f.checkpoint))[0]}"
  if not re.fullmatch(r"[A-Za-z0-9_.=+-]+", name):
    raise ConfigError(f"--name={name!r}: use letters, digits and _ . = + - only")
  expected = data.num_classes(f.dataset)
  trained = import_weights(f.arch, f.checkpoint, source=f.source, num_classes=f.num_classes,
                           input_size=f.input_size, mean=mean, std=std)
  k = trained.model.num_classes
  if expected is not None and k != expected:
    raise ConfigError(f"the checkpoint's head has {k} classes; --dataset={f.dataset} has {expected}")
  directory = runs.run_dir(f.workdir, f.dataset, f.arch, f.seed, "pixel", name)
  runs.save_imported(trained, {**record(trained, f.arch, f.checkpoint, f.source),
                               "name": name, "seed": f.seed, "dataset": f.dataset}, directory)
  print(f"imported {f.checkpoint} ({f.source} {f.arch}, {k} classes, input "
        f"{'x'.join(map(str, trained.input_shape))}) -> {directory}\n"
        f"use it by name: --model={f.arch} --losses={name} (experiments.ncg, .corrupted), or "
        f"every run is found by experiments.detect and .robustness")
