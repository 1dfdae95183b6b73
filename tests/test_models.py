import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncg_jax import models
from ncg_jax.models.layers import max_pool_2x2


def test_cnn002_shapes_and_parameter_count():
  model = models.create("cnn002", 9)
  params, state = models.init(model, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  assert state == {}
  n = sum(p.size for p in jax.tree.leaves(params))
  convs = (9 * 1 * 32 + 32) + (9 * 32 * 32 + 32) + (9 * 32 * 64 + 64) + (9 * 64 * 64 + 64)
  fcs = (1024 * 200 + 200) + (200 * 200 + 200) + (200 * 9 + 9)
  assert n == convs + fcs
  assert params["fc1"]["kernel"].shape == (1024, 200)  # 64 x 4 x 4 after two pools
  np.testing.assert_array_equal(params["head"]["kernel"], 0.0)  # zero-initialised last layer
  logits, feats = model.apply({"params": params}, jnp.ones((3, 28, 28, 1)))
  assert logits.shape == (3, 9) and feats.shape == (3, 200)


def test_intermediates_are_sown():
  model = models.create("cnn002", 9)
  params, _ = models.init(model, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  _, inter = model.apply({"params": params}, jnp.ones((2, 28, 28, 1)), mutable=["intermediates"])
  shapes = {k: v[0].shape for k, v in inter["intermediates"].items()}
  assert shapes == {"block1": (2, 12, 12, 32), "block2": (2, 4, 4, 64),
                    "conv_features": (2, 1024), "features": (2, 200)}


def test_dropout_only_in_train_mode():
  model = models.create("cnn002", 9)
  params, _ = models.init(model, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))
  a = model.apply({"params": params}, x, train=False)[1]
  b = model.apply({"params": params}, x, train=False)[1]
  np.testing.assert_array_equal(a, b)
  c = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(2)})[1]
  assert not np.allclose(a, c)


def test_max_pool_matches_flax_values_and_gradient():
  x = jax.random.normal(jax.random.key(0), (3, 8, 6, 5))  # continuous: no ties
  ref = lambda x: nn.max_pool(x, (2, 2), (2, 2))
  np.testing.assert_array_equal(max_pool_2x2(x), ref(x))
  w = jax.random.normal(jax.random.key(1), (3, 4, 3, 5))
  g = jax.grad(lambda x: jnp.sum(max_pool_2x2(x) * w))(x)
  g_ref = jax.grad(lambda x: jnp.sum(ref(x) * w))(x)
  np.testing.assert_array_equal(g, g_ref)


@pytest.mark.parametrize("padding", ["VALID", "SAME"])
def test_conv2d_matches_lax_values_and_both_gradients(padding):
  from jax import lax
  from ncg_jax.models.layers import conv2d
  jax.config.update("jax_default_matmul_precision", "highest")
  x = jax.random.normal(jax.random.key(0), (2, 9, 7, 3))
  w = jax.random.normal(jax.random.key(1), (3, 3, 3, 5))
  ref = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), padding,
                                              dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(conv2d(x, w, padding), ref(x, w), rtol=1e-5, atol=1e-5)
  dy = jax.random.normal(jax.random.key(2), ref(x, w).shape)
  ours = jax.vjp(lambda a, b: conv2d(a, b, padding), x, w)[1](dy)
  theirs = jax.vjp(ref, x, w)[1](dy)
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
  jax.config.update("jax_default_matmul_precision", None)


def test_wrn_40_10_parameter_count_and_shapes():
  model = models.create("wrn_40_10", 10)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  n = sum(np.prod(p.shape) for p in jax.tree.leaves(shapes["params"]))
  assert abs(n - 55.8e6) < 0.1e6, n  # the paper's WRN-40-10: about 55.8M parameters
  assert shapes["params"]["head"]["kernel"].shape == (640, 10)
  assert len([k for k in shapes["params"] if k.startswith("stage")]) == 18  # 6 blocks x 3


def test_small_wrn_trains_and_keeps_batchnorm_state():
  model = models.create("wrn_10_1", 4)
  params, state = models.init(model, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  assert "batch_stats" in state
  x = jax.random.uniform(jax.random.key(1), (8, 32, 32, 3))
  (logits, feats), new = model.apply({"params": params, **state}, x, train=True,
                                     mutable=["batch_stats"])
  assert logits.shape == (8, 4) and feats.shape == (8, 64)
  moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), new["batch_stats"], state["batch_stats"])
  assert all(jax.tree.leaves(moved))
  eval_logits, _ = model.apply({"params": params, **state}, x, train=False)
  assert np.all(np.isfinite(eval_logits))
