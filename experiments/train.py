"""Train one model with one loss: `python -m experiments.train --dataset=digitswo9
--model=cnn002 --loss=ce --workdir=DIR`. Resumes from the latest checkpoint in its run dir."""
from absl import flags

from experiments import common
from ncg_jax import data, runs

flags.DEFINE_string("loss", "ce", "Training loss (pixel space; feature-space heads are "
                    "trained by experiments.ncg on the natural network's features).")
FLAGS = flags.FLAGS


def run(cfg: common.ExperimentConfig) -> None:
  ds = data.load(cfg.dataset, cfg.data_dir)
  trained = runs.train_or_load(
      workdir=cfg.workdir, dataset=cfg.dataset, model_name=cfg.model, space="pixel",
      loss=cfg.runs[0].loss, data=ds.train, num_classes=ds.num_classes, cfg=cfg.pixel,
      attack=cfg.runs[0].attack)
  from ncg_jax.models import logits_and_features
  logits, _ = logits_and_features(trained, ds.test.x)
  print(f"test accuracy: {(logits.argmax(-1) == ds.test.y).mean():.4f} on {len(ds.test)} images")


def main(argv):
  del argv
  run(common.config_from_flags(loss_names=(FLAGS.loss,)))


if __name__ == "__main__":
  common.run(main, unused=tuple(f for f in common.TRAINING_FLAGS if f.startswith("feature"))
             + ("losses", "space", "nn_backend", "robust_n"),
             why="it trains one pixel-space model with --loss")
