"""Per-dataset training defaults: the NCG paper's (`params.py` of its repository), scaled
only where the dataset is tiny. Every field can be overridden by a flag.

Pixel space trains the named network; feature space trains the paper's MLP head (3 x 256)
on the frozen penultimate features of the naturally trained network. The paper trains 70
epochs with the learning rate x0.1 at epochs 40, 50 and 60, weight decay 0 and no data
augmentation (`--augment` turns on random crop + flip).
"""
import dataclasses

from ncg_jax.train.trainer import TrainConfig

PAPER = TrainConfig(epochs=70, milestones=(40, 50, 60))
MNIST = dataclasses.replace(PAPER, optimizer="sgd", lr=0.01, momentum=0.9, batch_size=128)
CIFAR = dataclasses.replace(PAPER, optimizer="adam", lr=0.01, batch_size=64)
IMGNET100 = dataclasses.replace(CIFAR, batch_size=128)
# The feature-space MLPs: SGD lr 0.01, momentum 0.9; batch 256 on MNIST, 128 elsewhere.
MLP = dataclasses.replace(PAPER, optimizer="sgd", lr=0.01, momentum=0.9, batch_size=128)

# `digits` has ~1.3k training images (10 steps an epoch): the MNIST optimizer and batch on a
# shorter schedule, so the default job stays within minutes on a laptop.
DIGITS = dataclasses.replace(MNIST, epochs=30, milestones=(20, 25))

PIXEL = {"digits": DIGITS, "mnist": MNIST, "cifar10": CIFAR, "cifar100": CIFAR, "cifar100coarse": CIFAR,
         "imgnet100": IMGNET100}
# ImgNet100: the paper's LargeMLPv4 heads (3 x 1024) at lr 0.1 (`feature_space_ncg.ipynb`)
FEATURE = {"digits": DIGITS, "mnist": dataclasses.replace(MLP, batch_size=256),
           "imgnet100": dataclasses.replace(MLP, lr=0.1)}
FEATURE_WIDTH = {"imgnet100": 1024}
USER = CIFAR  # npz: and folder: datasets


def pixel(base: str) -> TrainConfig:
  return PIXEL.get(base, USER)


def feature(base: str) -> TrainConfig:
  return FEATURE.get(base, MLP)


def feature_width(base: str) -> int:
  return FEATURE_WIDTH.get(base, 256)
