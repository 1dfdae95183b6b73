"""Prepares a dataset once, as array_record in the TFDS data directory.

  python -m ncg_jax.data.prepare cifar10 [--data_dir=DIR]       # mnist, cifar10, cifar100coarse
  python -m ncg_jax.data.prepare imgnet100 [--data_dir=DIR]     # needs imagenet2012's manual tars
  python -m ncg_jax.data.prepare cifar10-c [--corruptions=a,b]  # mnist-c, cifar10-c, imgnet100-c
  python -m ncg_jax.data.prepare cifar10-ood                    # experiments.detect's OOD sets
  python -m ncg_jax.data.prepare tfds:svhn_cropped              # any TFDS dataset (--ood=NAME=svhn_cropped)

TFDS's builders download (ImageNet: read <data_dir>/downloads/manual/) and encode with
TensorFlow, so this needs `pip install '.[tf]'`; training and evaluation afterwards do not.
`digits` needs neither (it is prepared on first use).
"""
import sys

from absl import app, flags

from ncg_jax import data
from ncg_jax.data import corruptions, tfds_io
from ncg_jax.registry import ConfigError

flags.DEFINE_string("data_dir", None, "TFDS data directory (default: TFDS's, honouring TFDS_DATA_DIR).")
flags.DEFINE_string("corruptions", None, "For <name>-c: comma-separated corruptions (default all).")
FLAGS = flags.FLAGS


def _require_tensorflow() -> None:
  try:
    import tensorflow  # noqa: F401
  except ImportError:
    raise ConfigError("preparing TFDS datasets needs TensorFlow: pip install '.[tf]'") from None


def _prepare_all(tfds_names: list[str], data_dir: str | None, log) -> None:
  """Prepares each named TFDS dataset (or config) as array_record, with progress lines."""
  _require_tensorflow()
  for i, tfds_name in enumerate(tfds_names):
    log(f"[{i + 1}/{len(tfds_names)}] {tfds_name}")
    tfds_io.builder(tfds_name, data_dir).download_and_prepare()


def prepare(name: str, data_dir: str | None, only=None, log=print) -> None:
  if name.startswith("tfds:"):  # any TFDS dataset, as `--ood` specs read it
    _prepare_all([name[5:]], data_dir, log)
    return
  if name.endswith("-ood"):  # the external OOD test sets of a base
    from ncg_jax.data import ood_sets
    sets = [tfds for group in ood_sets.OOD_SETS.get(name[:-4], {}).values()
            for tfds, _ in group.values()]
    if not sets:
      raise ConfigError(f"no external OOD sets for '{name[:-4]}'; "
                        f"available: {', '.join(f'{b}-ood' for b in ood_sets.OOD_SETS)}")
    _prepare_all(sets, data_dir, log)
    return
  base = corruptions.base_name(name)
  if base != name:  # a corrupted family: every config of the TFDS family
    make = corruptions.TFDS_FAMILIES.get(base)
    if make is None:
      raise ConfigError(f"'{name}' uses the built-in corruptions; nothing to prepare "
                        f"(TFDS families: {', '.join(f'{b}-c' for b in corruptions.TFDS_FAMILIES)})")
    family = make()
    chosen = only or corruptions.tfds_corruptions(family)
    configs = [f"{c}_{s}" for c in chosen for s in family.severities] if family.severities else chosen
    _prepare_all([f"{family.tfds_name}/{c}" for c in configs], data_dir, log)
    return
  _, source, _ = data.resolve(name)
  if not hasattr(source, "prepare"):
    raise ConfigError(f"'{name}' is read directly; nothing to prepare")
  if name == "imgnet100":
    log("preparing imagenet2012 (reads the manual tars), then the 100-class subset")
    _prepare_all(["imagenet2012"], data_dir, log)
  elif name != "digits":
    _require_tensorflow()
  source.prepare(data_dir)
  log(f"prepared {name}")


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: python -m ncg_jax.data.prepare NAME [--data_dir=DIR]")
  only = [c.strip() for c in FLAGS.corruptions.split(",")] if FLAGS.corruptions else None
  try:
    prepare(argv[1], FLAGS.data_dir, only)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
