"""python -m ncg_jax.models.import_weights --arch=ARCH --source=SOURCE --checkpoint=PATH
--dataset=NAME [--workdir=DIR] [--name=RUN]: one checkpoint -> one run directory
(`ncg_jax/models/pretrained.py` holds the sources and key layouts)."""
from ncg_jax import xla_cpu

xla_cpu.configure()  # before any JAX computation

from absl import app  # noqa: E402

from ncg_jax.models import pretrained  # noqa: E402

if __name__ == "__main__":
  pretrained.define_flags()
  app.run(pretrained.main)
