"""ncg_jax: nearest category generalization, robust training, attacks and OOD detection in JAX.

Importing ncg_jax applies its XLA:CPU settings (`ncg_jax/xla_cpu.py`): they take full effect
when ncg_jax is imported before JAX runs its first computation."""
from ncg_jax import xla_cpu

xla_cpu.configure(notice=True)

__version__ = "0.1.0"
