"""Per-dataset training defaults (the NCG paper's, scaled where the dataset is tiny).

Pixel space trains the named network; feature space trains the paper's MLP head (3 x 256)
on the frozen penultimate features of the naturally trained network.
"""
from ncg_jax.train.trainer import TrainConfig

# MNIST recipe of the paper: SGD lr 0.01, momentum 0.9, batch 128, 70 epochs, x0.1 at
# 40/50/60. `digits` has ~1.3k training images (10 steps an epoch), so it keeps the
# optimizer and batch but uses a shorter schedule to stay within minutes on a laptop.
PIXEL = {
    "digits": TrainConfig(optimizer="sgd", lr=0.01, momentum=0.9, batch_size=128,
                          epochs=30, milestones=(20, 25)),
}
FEATURE = {
    "digits": TrainConfig(optimizer="sgd", lr=0.01, momentum=0.9, batch_size=128,
                          epochs=30, milestones=(20, 25)),
}


def pixel(base: str) -> TrainConfig:
  return PIXEL[base]


def feature(base: str) -> TrainConfig:
  return FEATURE[base]
