import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import normal, uniform

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


def test_init_is_one_program_with_the_bits_of_flax_op_by_op_init():
  """`models.init` compiles the initialisation as one program (at LLVM -O1 on CPU); its
  variables are the bits of Flax's `model.init` run op by op at XLA's defaults for the
  architectures ncg_jax trains (here CNN002: variance-scaled truncated normals and zeros;
  MLP, WRN, ResNet and DenseNet were checked by hand). The ViT's position embedding,
  `normal(0.02)`, is within one ulp: compiled as one program, XLA folds the scale and the
  sampler's sqrt(2) into one constant (0.0282842703), which rounds differently."""
  cases = ((models.create("cnn002", 9), (28, 28, 1), 0),
           (models.create("vit_b_16", 3, image_size=16, patch=8, hidden=8, depth=1, heads=2,
                          mlp=16), (16, 16, 3), 1))
  for model, shape, ulps in cases:
    key = jax.random.key(5)
    params, state = models.init(model, key, jnp.zeros((4, *shape)))
    ref = model.init({"params": key, "dropout": key}, jnp.zeros((1, *shape)), train=False)
    assert jax.tree.structure(params) == jax.tree.structure(ref["params"])
    for a, b in zip(jax.tree.leaves((params, state)),
                    jax.tree.leaves((ref["params"], {k: ref[k] for k in state}))):
      np.testing.assert_array_max_ulp(a, b, maxulp=ulps)
    assert any(np.abs(a).max() > 0 for a in jax.tree.leaves(params))
    # inside another trace (how a run's checkpoint shapes are read) it is part of that trace
    shapes = jax.eval_shape(lambda: models.init(model, key, jnp.zeros((1, *shape))))
    assert jax.tree.map(lambda a: a.shape, shapes) == jax.tree.map(jnp.shape, (params, state))
  assert models._init_fn.cache_info().currsize >= len(cases)


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
  x = uniform(1, (4, 28, 28, 1))
  a = model.apply({"params": params}, x, train=False)[1]
  b = model.apply({"params": params}, x, train=False)[1]
  np.testing.assert_array_equal(a, b)
  c = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(2)})[1]
  assert not np.allclose(a, c)


def test_max_pool_matches_flax_values_and_gradient():
  x = normal(0, (3, 8, 6, 5))  # continuous: no ties
  ref = lambda x: nn.max_pool(x, (2, 2), (2, 2))
  np.testing.assert_array_equal(max_pool_2x2(x), ref(x))
  w = normal(1, (3, 4, 3, 5))
  g = jax.grad(lambda x: jnp.sum(max_pool_2x2(x) * w))(x)
  g_ref = jax.grad(lambda x: jnp.sum(ref(x) * w))(x)
  np.testing.assert_array_equal(g, g_ref)
  # at an exact tie XLA (like PyTorch's MaxPool2d) gives the gradient to the first maximum,
  # max_pool_2x2 shares it: the difference its docstring and the README record
  tie = jnp.zeros((1, 2, 2, 1)).at[0, 0, 1, 0].set(1.0).at[0, 1, :, 0].set(1.0)
  np.testing.assert_allclose(jax.grad(lambda x: max_pool_2x2(x).sum())(tie)[0, :, :, 0],
                             [[0, 1 / 3], [1 / 3, 1 / 3]], rtol=1e-6)
  np.testing.assert_array_equal(jax.grad(lambda x: ref(x).sum())(tie)[0, :, :, 0], [[0, 1], [0, 0]])
  # evaluated as XLA's reduce_window (the faster form in a fused forward), differentiated as
  # reshape + max (no select_and_scatter, XLA:CPU's scalar loop)
  assert "reduce_window_max" in str(jax.make_jaxpr(max_pool_2x2)(x))
  grad_jaxpr = str(jax.make_jaxpr(jax.grad(lambda x: jnp.sum(max_pool_2x2(x) * w)))(x))
  assert "reduce_max" in grad_jaxpr and "select_and_scatter" not in grad_jaxpr
  with pytest.raises(ValueError, match="even"):
    max_pool_2x2(jnp.zeros((1, 5, 4, 1)))


def test_input_gradients_take_the_pooling_backward_for_input_gradients_with_the_same_bits():
  """Inside `rowwise_value_and_grad` (ODIN, the attacks) `max_pool_2x2` traces its
  input-gradient backward (a window's maxima counted from its four positions); CNN002's
  input gradient is bitwise the one of `jax.grad` outside, ties at positive maxima included
  (blank image regions with positive biases: windows of equal activations)."""
  from ncg_jax import functional
  model = models.create("cnn002", 9)
  params, _ = models.init(model, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  params = jax.tree.map(lambda p: p + 0.05 if p.ndim == 1 else p, params)  # positive biases
  params["head"]["kernel"] = 0.1 * normal(1, (200, 9))
  x = uniform(2, (16, 28, 28, 1)).at[:, :8].set(0.0)
  y = jnp.arange(16) % 9
  loss = lambda xx, yy: (-jax.nn.log_softmax(model.apply({"params": params}, xx)[0])[
      jnp.arange(xx.shape[0]), yy], ())
  seen = []

  def watched(xx, yy):
    seen.append(functional.traces_input_gradient())
    return loss(xx, yy)
  (_, _), g = jax.jit(functional.rowwise_value_and_grad(watched))(x, y)
  assert seen == [True] and not functional.traces_input_gradient()
  g_ref = jax.jit(jax.grad(lambda xx: jnp.sum(loss(xx, y)[0])))(x)
  np.testing.assert_array_equal(g, g_ref)
  assert np.abs(g).sum() > 0
  # JAX's own rule sums a stored mask over each window; the input-gradient backward does not
  count_sum = "reduce_sum[axes=(2, 4)"
  outside = str(jax.make_jaxpr(jax.grad(lambda xx: jnp.sum(loss(xx, y)[0])))(x))
  inside = str(jax.make_jaxpr(functional.rowwise_value_and_grad(loss))(x, y))
  assert count_sum in outside.replace("\n", " ") and count_sum not in inside.replace("\n", " ")


@pytest.mark.parametrize("padding", ["VALID", "SAME"])
@pytest.mark.parametrize("in_channels,kernel", [(1, 3), (3, 5), (8, 3)])
def test_conv2d_matches_lax_values_and_both_gradients(padding, in_channels, kernel):
  from jax import lax
  from ncg_jax.models.layers import conv2d
  jax.config.update("jax_default_matmul_precision", "highest")
  x = normal(0, (2, 9, 7, in_channels))
  w = normal(1, (kernel, kernel, in_channels, 5))
  ref = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), padding,
                                              dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(conv2d(x, w, padding), ref(x, w), rtol=1e-5, atol=1e-5)
  dy = normal(2, ref(x, w).shape)
  ours = jax.vjp(lambda a, b: conv2d(a, b, padding), x, w)[1](dy)
  theirs = jax.vjp(ref, x, w)[1](dy)
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
  jax.config.update("jax_default_matmul_precision", None)


@pytest.mark.parametrize("padding", ["VALID", "SAME"])
@pytest.mark.parametrize("in_channels,kernel", [(1, 3), (3, 5), (3, 7)])
def test_sign_only_input_gradient_of_a_few_channel_convolution_is_the_transposed_convolution(
    padding, in_channels, kernel):
  """Traced for a sign-only input gradient (`rowwise_value_and_grad(..., sign_only=True)`:
  ODIN, Mahalanobis preprocessing), a convolution with at most three input channels takes
  its input gradient as one matrix product and shifted adds: the value of lax's own VJP (a
  float64 numpy oracle below), and no transposed convolution in the program. Without
  `sign_only` (the attacks) the layer keeps `conv2d`'s convolution."""
  from ncg_jax import functional
  from ncg_jax.models import layers
  assert in_channels <= layers._MATMUL_GRADIENT_MAX_IN
  w = normal(1, (kernel, kernel, in_channels, 6))
  x = normal(0, (3, 11, 9, in_channels))
  value = lambda xx: layers.conv2d_for_backend(xx, w, padding)
  dy = normal(2, value(x).shape)
  rows = lambda sign_only: jax.jit(functional.rowwise_value_and_grad(
      lambda xx: (jnp.sum(value(xx) * dy, axis=(1, 2, 3)), ()), sign_only=sign_only))
  # numpy oracle: dx[b, y + u, x + v, i] += dy[b, y, x, o] w[u, v, i, o] on the padded input
  kh, kw = w.shape[:2]
  ph, pw = (kh // 2, kw // 2) if padding == "SAME" else (0, 0)
  d64, w64 = np.asarray(dy, np.float64), np.asarray(w, np.float64)
  full = np.zeros((3, 11 + 2 * ph, 9 + 2 * pw, in_channels))
  for u in range(kh):
    for v in range(kw):
      full[:, u:u + d64.shape[1], v:v + d64.shape[2]] += d64 @ w64[u, v].T
  oracle = full[:, ph:ph + 11, pw:pw + 9]
  for sign_only in (True, False):
    np.testing.assert_allclose(rows(sign_only)(x)[1], oracle, rtol=1e-5, atol=1e-5)
  convolutions = lambda s: rows(s).lower(x).as_text().count("stablehlo.convolution")
  assert convolutions(True) == 1  # the forward only
  assert convolutions(False) == 2  # and the transposed convolution


def test_attacks_keep_the_exact_input_gradient_and_odin_takes_the_sign_only_one(monkeypatch):
  """The sign-only form is chosen by ODIN and Mahalanobis preprocessing (single and layer
  ensemble) alone: PGD's ascent (and so TRADES and the robust accuracy) traces its gradient
  with `sign_only` off."""
  from ncg_jax import detect, functional
  from ncg_jax.detect import distances
  pgd_module = importlib.import_module("ncg_jax.attacks.pgd")  # the package exports pgd()
  seen = []
  real = functional.rowwise_value_and_grad

  def watched(fn, rows=64, sign_only=False):
    seen.append(sign_only)
    return real(fn, rows, sign_only)
  for module in (pgd_module, detect.gradients, distances):
    monkeypatch.setattr(module, "rowwise_value_and_grad", watched)
  f = lambda xx: xx.reshape(xx.shape[0], -1)[:, :3]
  x = uniform(0, (4, 2, 2, 1))
  detect.odin(f, x)
  stats = detect.fit_mahalanobis(np.asarray(f(x)), np.arange(4) % 3, 3)
  detect.mahalanobis_preprocessed(f, stats, x)
  distances.ensemble_layer_scores(lambda xx: {"layer": f(xx)}, {"layer": stats}, x,
                                  epsilon=0.01)
  assert seen == [True, True, True]
  pgd_module.pgd(f, x, jnp.arange(4) % 3, eps=0.1, norm="linf", steps=2, step_size=0.05)
  assert seen == [True, True, True, False]


@pytest.mark.parametrize("padding", ["VALID", "SAME"])
@pytest.mark.parametrize("in_channels,out_channels,kernel", [(1, 32, 3), (1, 8, 5), (2, 16, 3),
                                                             (3, 64, 3)])
def test_conv2d_forward_under_differentiation_is_bitwise_the_convolution(
    padding, in_channels, out_channels, kernel):
  """The few-input-channel forward (`layers._conv_by_taps`) gives XLA:CPU's convolution bit
  for bit, signs of zero included, on digit-like inputs (many exact zeros, negative weights)."""
  from jax import lax
  from ncg_jax.models import layers
  assert in_channels <= layers._TAPS_MAX_IN and out_channels >= layers._TAPS_MIN_OUT
  assert kernel * kernel * in_channels <= layers._TAPS_MAX_TERMS
  rng = np.random.default_rng(in_channels + kernel)
  x = rng.random((6, 12, 11, in_channels), dtype=np.float32)
  x[x < 0.5] = 0.0
  x[:, :7, :7] = 0.0  # a blank corner, as digits have: outputs that are exact zeros
  w = rng.normal(size=(kernel, kernel, in_channels, out_channels)).astype(np.float32)
  w[..., :4] = -np.abs(w[..., :4])
  ref = jax.jit(lambda x, w: lax.conv_general_dilated(x, w, (1, 1), padding,
                                                      dimension_numbers=("NHWC", "HWIO", "NHWC")))
  ours = jax.jit(lambda x, w: jax.vjp(lambda a, b: layers.conv2d(a, b, padding), x, w)[0])
  a, b = np.asarray(ours(x, w)), np.asarray(ref(x, w))
  assert (b == 0).any() and not np.signbit(b[b == 0]).any()
  np.testing.assert_array_equal(a.view(np.int32), b.view(np.int32))


def test_cnn002_gradients_are_bitwise_the_same_with_the_few_channel_forward(monkeypatch):
  """CNN002's parameter gradient, input gradient and TRADES loss and gradient compile to the
  same bits whether conv1's forward under differentiation is the taps form or XLA's
  convolution (TRADES's clean prediction goes through the differentiated forward)."""
  from ncg_jax.models import layers
  from ncg_jax.train import losses
  from ncg_jax.train.trainer import make_forward
  model = models.create("cnn002", 9)
  params, _ = models.init(model, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  params["head"]["kernel"] = 0.05 * normal(1, (200, 9))
  rng = np.random.default_rng(0)
  x = rng.random((32, 28, 28, 1), dtype=np.float32)
  x[x < 0.5] = 0.0
  y = jnp.arange(32) % 9
  forward = make_forward(model)
  trades = losses.make_loss("trades6", losses.AttackConfig(steps=2))

  def grads():
    def ce(p, xx):
      return losses.cross_entropy(model.apply({"params": p}, xx)[0], y).mean()
    step = lambda p: trades(forward, p, {}, jnp.asarray(x), y, jax.random.key(2))[0]
    return (jax.jit(jax.grad(ce, argnums=(0, 1)))(params, jnp.asarray(x)),
            jax.jit(jax.value_and_grad(step))(params))
  taps = grads()
  monkeypatch.setattr(layers, "_TAPS_MAX_IN", 0)
  plain = grads()
  for a, b in zip(jax.tree.leaves(taps), jax.tree.leaves(plain)):
    np.testing.assert_array_equal(np.asarray(a).view(np.int32), np.asarray(b).view(np.int32))


def test_conv_layers_use_the_custom_gradient_on_the_cpu_backend_only(monkeypatch):
  from ncg_jax.models import layers
  x, w = jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 4))
  # a new function each time: traces are cached per function
  traced = lambda: str(jax.make_jaxpr(lambda a, b: layers.conv2d_for_backend(a, b))(x, w))
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  assert "custom_vjp_call" in traced()
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert "custom_vjp_call" not in traced() and "conv_general_dilated" in traced()


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
  x = uniform(1, (8, 32, 32, 3))
  (logits, feats), new = model.apply({"params": params, **state}, x, train=True,
                                     mutable=["batch_stats"])
  assert logits.shape == (8, 4) and feats.shape == (8, 64)
  moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), new["batch_stats"], state["batch_stats"])
  assert all(jax.tree.leaves(moved))
  eval_logits, _ = model.apply({"params": params, **state}, x, train=False)
  assert np.all(np.isfinite(eval_logits))


# Parameter counts of the PyTorch reference implementations (BatchNorm scale and bias count
# as parameters there too): OpenOOD's ResNet18_32x32 with 10 classes 11,173,962; torchvision's
# resnet50 25,557,032 with 1,000 classes, i.e. 23,508,032 + 2049 x 100 with 100; the
# DenseNet-BC (L=100, k=12) of ODIN with 10 classes 769,162.
@pytest.mark.parametrize("name,shape,k,count,inter", [
    ("resnet18", (32, 32, 3), 10, 11_173_962,
     {"layer1": (32, 32, 64), "layer2": (16, 16, 128), "layer3": (8, 8, 256), "layer4": (4, 4, 512),
      "features": (512,)}),
    ("resnet50", (112, 112, 3), 100, 23_508_032 + 2049 * 100,
     {"layer1": (28, 28, 256), "layer2": (14, 14, 512), "layer3": (7, 7, 1024),
      "layer4": (4, 4, 2048), "features": (2048,)}),
    ("densenet_bc_100_12", (32, 32, 3), 10, 769_162,
     {"block1": (32, 32, 216), "block2": (16, 16, 300), "block3": (8, 8, 342), "features": (342,)}),
])
def test_architectures_shapes_and_parameter_counts(name, shape, k, count, inter):
  model = models.create(name, k)
  x = jnp.zeros((2, *shape))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  assert sum(p.size for p in jax.tree.leaves(variables["params"])) == count
  assert variables["params"]["head"]["kernel"].shape[1] == k
  (logits, feats), sown = jax.eval_shape(
      lambda: model.apply(model.init(jax.random.key(0), x), x, mutable=["intermediates"]))
  assert logits.shape == (2, k) and feats.shape == (2, inter["features"][0])
  assert {n: v[0].shape[1:] for n, v in sown["intermediates"].items()} == inter
  assert set(variables["perturbations"]) == set(inter)


def test_normalisation_lives_inside_the_model():
  from ncg_jax.models.layers import normalize
  from ncg_jax.models.resnet import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD, ResNet
  x = uniform(0, (2, 4, 4, 3))
  want = (np.asarray(x) - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
  np.testing.assert_allclose(normalize(x, IMAGENET_MEAN, IMAGENET_STD), want, rtol=1e-5, atol=1e-6)
  # resnet18 takes [0, 1] pixels and normalises them itself: the same network without
  # normalisation, fed normalised pixels, computes the same logits
  model = models.create("resnet18", 3)
  params, state = models.init(model, jax.random.key(1), jnp.zeros((1, 32, 32, 3)))
  v = {"params": params, **state}
  x = uniform(2, (2, 32, 32, 3))
  plain = ResNet(3, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
  a = jax.jit(model.apply)(v, x)[0]
  b = jax.jit(plain.apply)(v, normalize(x, CIFAR10_MEAN, CIFAR10_STD))[0]
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_augment_is_a_padded_crop_or_its_mirror():
  from ncg_jax.train.trainer import augment
  x = uniform(0, (16, 8, 8, 3))
  out = np.asarray(augment(x, jax.random.key(1)))
  padded = np.pad(np.asarray(x), ((0, 0), (4, 4), (4, 4), (0, 0)))
  flips = 0
  for i in range(16):
    windows = [padded[i, a:a + 8, b:b + 8] for a in range(9) for b in range(9)]
    plain = any(np.array_equal(out[i], w) for w in windows)
    mirrored = any(np.array_equal(out[i], w[:, ::-1]) for w in windows)
    assert plain or mirrored
    flips += mirrored and not plain
  assert 0 < flips < 16
  np.testing.assert_array_equal(augment(x, jax.random.key(1)), out)  # a function of the key


def test_outputs_and_embeddings_compile_once_per_architecture_and_shape():
  """`logits_and_features` and `embed` reuse one compiled program for every model of an
  architecture and every call of the same batch shape (the variables are arguments)."""
  from ncg_jax.models import trained as tr
  model = models.create("cnn002", 9)
  x = np.zeros((40, 28, 28, 1), np.uint8)
  sizes, before = [], tr._outputs_fn(model)._cache_size()
  for seed in (0, 1, 2):  # three models of one architecture
    params, state = models.init(model, jax.random.key(seed), jnp.zeros((1, 28, 28, 1)))
    t = models.Trained(model, params, state, (28, 28, 1))
    models.logits_and_features(t, x, batch_size=16)  # 3 batches, the last one padded
    models.embed(t, x, "conv_features", batch_size=16)
    # other tests in this process may have compiled other shapes before: count what we add
    sizes.append((tr._outputs_fn(model)._cache_size(),
                  tr._layer_fn(model, "conv_features")._cache_size()))
  assert sizes[0][0] - before <= 1  # 3 batches, the last one padded: one program at most
  assert sizes[0] == sizes[1] == sizes[2]  # the 2nd and 3rd model compiled nothing
