"""One compiled program per architecture and shape: attacks and detectors called on several
models of one architecture trace the model once (`chex.assert_max_traces` raises on a
second trace), because models reach them as `Partial`s whose leaves are the variables."""
import chex
import jax
import jax.numpy as jnp
import numpy as np

from ncg_jax import detect, models
from ncg_jax.attacks import cw_l2, robust_accuracy
from ncg_jax.detect import nac


def _variables(model, seed):
  params, state = models.init(model, jax.random.key(seed), jnp.zeros((1, 28, 28, 1)))
  return {"params": params, **state}


def test_attacks_and_detectors_trace_each_architecture_once():
  model = models.create("cnn002", 9)
  variables = [_variables(model, s) for s in (0, 1, 2)]
  x = np.random.default_rng(0).random((8, 28, 28, 1)).astype(np.float32)
  y = np.arange(8) % 9

  def consumers():
    return {
        "odin": lambda f, v: detect.odin(f, x, temperature=1000.0, epsilon=0.0014),
        "cw_l2": lambda f, v: cw_l2(f, x, y, binary_search_steps=2, max_iterations=3, batch_size=8),
        "robust_accuracy": lambda f, v: robust_accuracy(
            f, x, y, eps=0.5, norm="l2", pgd_steps=2, pgd_restarts=1, apgd_steps=2,
            key=jax.random.key(0)),
    }

  for name, use in consumers().items():
    # one compilation may call the model several times (ODIN: two forwards); count them
    calls = []
    probe = lambda v, xx, calls=calls: (calls.append(1), model.apply(v, xx, train=False)[0])[1]
    use(jax.tree_util.Partial(probe, variables[0]), variables[0])
    # a function allowed exactly that many traces serves all three models (chex counts
    # per code location, so the counter is cleared for each consumer)
    chex.clear_trace_counter()
    fn = chex.assert_max_traces(lambda v, xx: model.apply(v, xx, train=False)[0], n=len(calls))
    for v in variables:
      use(jax.tree_util.Partial(fn, v), v)
  before = nac._pooled._cache_size()
  for v in variables:
    nac.pooled_states(model, v, x, ("block1", "features"))
  assert nac._pooled._cache_size() == before + 1
