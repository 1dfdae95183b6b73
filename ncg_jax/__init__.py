"""ncg_jax: nearest category generalization, robust training, attacks and OOD detection in JAX."""
__version__ = "0.1.0"
