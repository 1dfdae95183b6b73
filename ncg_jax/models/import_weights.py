"""python -m ncg_jax.models.import_weights --arch=ARCH --source=SOURCE --checkpoint=PATH
--dataset=NAME [--workdir=DIR] [--name=RUN]: one checkpoint -> one run directory
(`ncg_jax/models/pretrained.py` holds the sources and key layouts)."""
from absl import app

from ncg_jax.models import pretrained

if __name__ == "__main__":
  pretrained.define_flags()
  app.run(pretrained.main)
