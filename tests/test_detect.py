"""Each detector against an independent implementation written here (numpy, scipy,
scikit-learn, or a closed form on a linear model)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp, softmax
from sklearn.covariance import EmpiricalCovariance
from sklearn.neighbors import NearestNeighbors

from conftest import normal, uniform

from ncg_jax import detect, models
from ncg_jax.detect import distances, gradients, nac
from ncg_jax.functional import as_partial, in_row_chunks, rowwise_value_and_grad
from ncg_jax.models import Trained


@pytest.fixture(autouse=True)
def highest_precision():
  jax.config.update("jax_default_matmul_precision", "highest")
  yield
  jax.config.update("jax_default_matmul_precision", None)


def linear(d=12, c=5, seed=0):
  rng = np.random.default_rng(seed)
  head = {"kernel": rng.normal(size=(d, c)).astype(np.float32),
          "bias": rng.normal(size=c).astype(np.float32)}
  h = np.abs(rng.normal(size=(40, d))).astype(np.float32)  # ReLU-like features
  return head, h


def test_logit_scores():
  z = np.random.default_rng(0).normal(size=(30, 7)) * 3
  np.testing.assert_allclose(detect.msp(z), softmax(z, axis=1).max(1), rtol=1e-5)
  np.testing.assert_allclose(detect.max_logit(z), z.max(1), rtol=1e-6)
  for t in (1.0, 2.5):
    np.testing.assert_allclose(detect.energy(z, temperature=t), t * logsumexp(z / t, axis=1),
                               rtol=1e-5)


@pytest.mark.parametrize("temperature,epsilon", [(1000.0, 0.0014), (1.0, 0.01)])
def test_odin_on_a_linear_model_matches_the_closed_form(temperature, epsilon):
  rng = np.random.default_rng(1)
  w = rng.normal(size=(6, 4))
  b = rng.normal(size=4)
  x = rng.random((25, 6))
  std = np.array([0.2, 0.3, 0.25, 0.5, 0.4, 0.3])
  f = lambda xx: xx @ jnp.asarray(w, jnp.float32) + jnp.asarray(b, jnp.float32)[None]
  # d/dx CE(z/T, yhat) = W (softmax(z/T) - onehot(yhat)) / T
  z = x @ w + b
  yhat = z.argmax(1)
  grad = (softmax(z / temperature, axis=1) - np.eye(4)[yhat]) @ w.T / temperature
  step = np.where(grad >= 0, 1.0, -1.0) / std
  x2 = x - epsilon * step
  ref = softmax((x2 @ w + b) / temperature, axis=1).max(1)
  ours = detect.odin(f, x.astype(np.float32), temperature=temperature, epsilon=epsilon,
                     input_std=std.astype(np.float32))
  np.testing.assert_allclose(ours, ref, rtol=1e-4)
  # several magnitudes from one gradient: one column each
  both = detect.odin(f, x.astype(np.float32), temperature=temperature,
                     epsilon=(epsilon, 3 * epsilon), input_std=std.astype(np.float32))
  ref3 = softmax(((x - 3 * epsilon * step) @ w + b) / temperature, axis=1).max(1)
  assert both.shape == (25, 2)
  np.testing.assert_allclose(both, np.stack([ref, ref3], 1), rtol=1e-4)
  with pytest.raises(ValueError, match="1-D"):
    detect.odin(f, x.astype(np.float32), epsilon=[[epsilon]])


def test_odin_zero_gradient_steps_plus_one():
  # the gradient through stop_gradient is exactly zero; the original maps 0 to +1, so the
  # second forward sees x' = x - eps / std (np.sign would leave x unchanged)
  w = np.array([[1.0, -1.0, 0.5, 2.0], [0.0, 1.0, -1.0, 1.0], [2.0, 0.0, 0.0, -1.0]], np.float32).T
  f = lambda xx: jax.lax.stop_gradient(xx) @ w
  x = np.full((2, 4), 0.5, np.float32)
  ours = detect.odin(f, x, temperature=1.0, epsilon=0.1, input_std=2.0)
  np.testing.assert_allclose(ours, softmax((x - 0.05) @ w, axis=1).max(1), rtol=1e-5)
  assert not np.allclose(ours, softmax(x @ w, axis=1).max(1))


def test_as_ncg_jax_layers_keeps_values_and_gradients_of_flax_pooling_and_convolutions():
  import flax.linen as nn
  from ncg_jax.models.layers import as_ncg_jax_layers
  inner = jax.jit(lambda h: nn.max_pool(h, (2, 2), (2, 2)))  # nested jit, odd height
  convs = [nn.Conv(4, (3, 3)), nn.Conv(4, (3, 3), padding="VALID"),
           nn.Conv(4, (3, 3), padding=((2, 0), (1, 1))), nn.Conv(4, (3, 3), strides=2)]
  x = normal(0, (2, 7, 6, 3))
  vs = [c.init(jax.random.key(i), x) for i, c in enumerate(convs)]

  def f(x):
    pooled = jnp.sum(jnp.tanh(inner(x)) * jnp.arange(3.0)[None, None, None])
    overlapping = jnp.sum(nn.max_pool(x, (3, 3), (2, 2), padding="SAME"))  # kept as it is
    return pooled + overlapping + sum(jnp.sum(jnp.sin(c.apply(v, x))) for c, v in zip(convs, vs))

  g = as_ncg_jax_layers(f)
  np.testing.assert_allclose(g(x), f(x), rtol=1e-6)
  np.testing.assert_allclose(jax.grad(g)(x), jax.grad(f)(x), rtol=1e-5, atol=1e-6)
  grad_jaxpr, jaxpr = str(jax.make_jaxpr(jax.grad(g))(x)), str(jax.make_jaxpr(g)(x))
  assert grad_jaxpr.count("reduce_window_max") == 1 and "reduce_max" in grad_jaxpr
  assert jaxpr.count("custom_vjp_call") == 3  # the strided convolution stays XLA's


def test_in_row_chunks_maps_rows_in_chunks_with_the_same_values_and_gradients():
  w = normal(0, (3, 3, 1, 4))
  f = lambda x: jnp.tanh(jax.lax.conv_general_dilated(
      x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))).sum(axis=(1, 2))
  x = normal(1, (24, 6, 6, 1))
  g = in_row_chunks(f, rows=8)
  np.testing.assert_allclose(g(x), f(x), rtol=1e-6, atol=1e-6)
  loss = lambda h: lambda xx: jnp.sum(h(xx) ** 2)
  np.testing.assert_allclose(jax.grad(loss(g))(x), jax.grad(loss(f))(x), rtol=1e-4, atol=1e-5)
  assert "scan" in str(jax.make_jaxpr(g)(x))  # three chunks of 8 rows
  assert "scan" not in str(jax.make_jaxpr(g)(x[:20]))  # 20 rows: not a multiple of 8


def test_rowwise_value_and_grad_chunks_the_gradient_and_its_row_arguments():
  """Values, aux and input gradient as `jax.value_and_grad` of the summed per-row values;
  the labels travel with their rows; on the CPU one loop holds each chunk's forward and VJP."""
  w = normal(0, (3, 3, 1, 4))
  x = normal(1, (192, 6, 6, 1))
  y = jnp.arange(192) % 4

  def per_row(xx, yy):
    z = jnp.tanh(jax.lax.conv_general_dilated(
        xx, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))).sum(axis=(1, 2))
    return -jnp.take_along_axis(jax.nn.log_softmax(z), yy[:, None], axis=-1)[:, 0], z

  (v, z), g = rowwise_value_and_grad(per_row)(x, y)
  (_, (v0, z0)), g0 = jax.value_and_grad(lambda xx: (jnp.sum(per_row(xx, y)[0]), per_row(xx, y)),
                                         has_aux=True)(x)
  np.testing.assert_allclose(v, v0, rtol=1e-5)
  np.testing.assert_allclose(z, z0, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(g, g0, rtol=1e-4, atol=1e-6)
  assert str(jax.make_jaxpr(rowwise_value_and_grad(per_row))(x, y)).count("scan[") == 1
  assert "scan[" not in str(jax.make_jaxpr(rowwise_value_and_grad(per_row))(x[:100], y[:100]))


def plain_flax_net(x, outputs: int):
  """A user's network in plain Flax (`nn.Conv`, `nn.max_pool`: XLA differentiates the pool
  into `select_and_scatter`), initialised on `x`, as a function of images."""
  import flax.linen as nn

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.max_pool(nn.relu(nn.Conv(4, (3, 3))(x)), (2, 2), (2, 2))
      return nn.Dense(outputs)(x.reshape(x.shape[0], -1))

  v = Net().init(jax.random.key(2), x)
  return lambda xx: Net().apply(v, xx)


def test_odin_through_a_plain_flax_network_equals_odin_from_xla_gradients():
  x = uniform(1, (128, 8, 8, 1))  # two chunks of 64 on the CPU
  f = plain_flax_net(x, 5)
  t, eps = 1000.0, 0.0014
  g = jax.grad(lambda xx: -jnp.sum(jax.nn.log_softmax(f(xx) / t)[jnp.arange(128),
                                                                   jnp.argmax(f(x), -1)]))(x)
  ref = jnp.max(jax.nn.softmax(f(x - eps * jnp.where(g >= 0, 1.0, -1.0)) / t), axis=-1)
  np.testing.assert_allclose(detect.odin(f, x, temperature=t, epsilon=eps), ref, rtol=1e-6)
  # one loop: each chunk's forward and VJP together (differentiating a chunked forward makes
  # two, the second reading activations stacked by the first)
  jaxpr = jax.make_jaxpr(gradients._odin_direction)(as_partial(f), x, t, jnp.float32(1.0))
  assert str(jaxpr).count("scan[") == 1


def test_odin_through_an_nchw_lax_network_runs_its_convolutions_and_pools_in_nhwc():
  """A PyTorch-style `lax` network (NCHW activations, OIHW kernels, `lax.conv`'s defaults):
  `as_ncg_jax_layers` moves its convolutions and 2 x 2 pools to NHWC and back, so ODIN
  runs ncg_jax's convolution VJP and pooling backward on it (no `select_and_scatter`); its
  scores equal ODIN's through the same network written in NHWC, and the rewritten function
  keeps the network's values and input gradient."""
  from jax import lax
  from ncg_jax.models.layers import as_ncg_jax_layers
  w1, w2 = normal(0, (4, 3, 3, 3)), normal(1, (5, 4, 3, 3))  # OIHW
  b1, head = normal(2, (4,)), normal(3, (5 * 3 * 3, 6))

  def nchw(x):
    h = jax.nn.relu(lax.conv(x, w1, (1, 1), "SAME") + b1[None, :, None, None])
    h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
    h = jnp.tanh(lax.conv_general_dilated(h, w2, (1, 1), ((1, 0), (0, 1))))  # explicit pads
    return h.reshape(h.shape[0], -1) @ head

  def nhwc(x):  # the same network channel-last: the reference for ODIN's scores
    dn = ("NHWC", "HWIO", "NHWC")
    h = jax.nn.relu(lax.conv_general_dilated(x, w1.transpose(2, 3, 1, 0), (1, 1), "SAME",
                                             dimension_numbers=dn) + b1[None, None, None])
    h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    h = jnp.tanh(lax.conv_general_dilated(h, w2.transpose(2, 3, 1, 0), (1, 1),
                                          ((1, 0), (0, 1)), dimension_numbers=dn))
    return h.transpose(0, 3, 1, 2).reshape(h.shape[0], -1) @ head

  x = uniform(4, (128, 8, 8, 3))
  xc = jnp.asarray(x.transpose(0, 3, 1, 2))
  g = as_ncg_jax_layers(nchw)
  np.testing.assert_allclose(g(xc), nchw(xc), rtol=1e-5, atol=1e-5)
  total = lambda f: lambda xx: jnp.sum(jnp.sin(f(xx)))
  np.testing.assert_allclose(jax.grad(total(g))(xc), jax.grad(total(nchw))(xc), rtol=1e-4,
                             atol=1e-5)
  assert str(jax.make_jaxpr(g)(xc)).count("custom_vjp_call") == 2  # both convolutions
  np.testing.assert_allclose(detect.odin(nchw, xc), detect.odin(nhwc, jnp.asarray(x)), rtol=1e-6)
  hlo = gradients._odin_direction.lower(as_partial(nchw), xc, 1000.0, jnp.float32(1.0)).as_text()
  assert "select_and_scatter" not in hlo
  assert "select_and_scatter" in jax.jit(jax.grad(total(nchw))).lower(xc).as_text()


def test_as_partial_says_once_when_a_function_holds_arrays_jit_compiles_in(capsys):
  """A function reading 1 MiB of arrays from its closure, its globals or a functools.partial
  gets one line on stderr (jaxlib 0.10.2's XLA:CPU crashes on some such programs); the same
  arrays passed as a `Partial`'s arguments, or a small closure, get nothing."""
  import functools
  from ncg_jax import functional
  affected = functional._jaxlib_version() in functional._CONSTANT_CRASH_JAXLIB
  big = np.arange(512 * 512, dtype=np.float32).reshape(512, 512) / 1e5  # 1 MiB
  x = np.ones((2, 512), np.float32)
  closure = lambda xx: xx @ big
  bound = functools.partial(lambda v, xx: xx @ v["w"], {"w": jnp.asarray(big)})
  nested = lambda xx: closure(xx) + 1.0  # the array sits one function down
  small = lambda xx: xx @ big[:, :2]  # slices at call time: still the whole array read
  assert functional.closed_over_bytes(closure) == big.nbytes
  assert functional.closed_over_bytes(bound) == big.nbytes
  assert functional.closed_over_bytes(nested) == big.nbytes
  assert functional.closed_over_bytes(small) == big.nbytes
  assert functional.closed_over_bytes(lambda xx: xx * 2.0) == 0
  for f in (closure, closure, bound, nested):
    np.testing.assert_allclose(as_partial(f)(x), f(x))
  err = capsys.readouterr().err.splitlines()
  assert len(err) == (3 if affected else 0), err  # once per function
  assert all(line.startswith("ncg_jax: ") and "1.0 MiB" in line and "Partial(f, variables)" in line
             for line in err)
  as_partial(jax.tree_util.Partial(lambda w, xx: xx @ w, big))
  as_partial(lambda xx: xx @ np.eye(512, dtype=np.float32)[:, :4])
  assert capsys.readouterr().err == ""
  other = lambda xx: xx @ big * 2.0  # the notebook API's plain functions, jitted together
  np.testing.assert_allclose(detect.FunctionNetwork(other, closure)._both(x)[0], other(x), rtol=1e-5)
  assert capsys.readouterr().err.count("ncg_jax: ") == (1 if affected else 0)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_gradnorm_autodiff_equals_closed_form_and_numpy(temperature):
  head, h = linear()
  auto = detect.gradnorm(detect.linear_head, head, h, temperature=temperature)
  closed = detect.gradnorm_linear(head, h, temperature=temperature)
  np.testing.assert_allclose(auto, closed, rtol=1e-4)
  # numpy: gradient of sum_c -log_softmax(z/T)_c w.r.t. W is outer(h, (C q - 1) / T)
  z = h @ head["kernel"] + head["bias"]
  q = softmax(z / temperature, axis=1)
  dz = (5 * q - 1) / temperature
  ref_w = np.array([np.abs(np.outer(hi, di)).sum() for hi, di in zip(h, dz)])
  np.testing.assert_allclose(detect.gradnorm_linear(head, h, temperature=temperature,
                                                    include_bias=False), ref_w, rtol=1e-4)
  np.testing.assert_allclose(closed, ref_w + np.abs(dz).sum(1), rtol=1e-4)


def test_mahalanobis_against_sklearn_and_explicit_distances():
  rng = np.random.default_rng(2)
  y = rng.integers(0, 3, 300)
  h = rng.normal(size=(300, 6)) + y[:, None]
  stats = detect.fit_mahalanobis(h, y, 3)
  means = np.stack([h[y == c].mean(0) for c in range(3)])
  cov = EmpiricalCovariance(assume_centered=False).fit(h - means[y])
  np.testing.assert_allclose(stats["precision"], cov.precision_, rtol=1e-3, atol=1e-4)
  q = rng.normal(size=(20, 6))
  ref = np.array([max(-(qi - m) @ cov.precision_ @ (qi - m) for m in means) for qi in q])
  np.testing.assert_allclose(detect.mahalanobis(stats, q), ref, rtol=1e-4, atol=1e-4)
  # a class without training features would give NaN means and NaN scores for every input
  with pytest.raises(ValueError, match=r"class\(es\) \[1\]"):
    detect.fit_mahalanobis(h[y != 1], y[y != 1], 3)


def test_react_and_ash_against_numpy():
  head, h = linear()
  thr = detect.react_threshold(h, 80)
  assert thr == np.percentile(h.reshape(-1), 80)
  ref = logsumexp(np.minimum(h, thr) @ head["kernel"] + head["bias"], axis=1)
  np.testing.assert_allclose(detect.react(detect.linear_head, head, h, thr), ref, rtol=1e-5)
  # ASH-B, 12 features at p=75: keep the 3 largest, each set to sum(h) / 3
  shaped = np.zeros_like(h)
  for i, row in enumerate(h):
    top = np.argsort(row)[::-1][:3]
    shaped[i, top] = row.sum() / 3
  ref = logsumexp(shaped @ head["kernel"] + head["bias"], axis=1)
  np.testing.assert_allclose(detect.ash(detect.linear_head, head, h, 75), ref, rtol=1e-5)


def test_knn_against_sklearn():
  rng = np.random.default_rng(3)
  train, q = rng.normal(size=(500, 8)), rng.normal(size=(30, 8))
  norm = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
  nn = NearestNeighbors(n_neighbors=10).fit(norm(train))
  ref = -nn.kneighbors(norm(q))[0][:, 9]
  for backend in ("faiss", "jax"):
    np.testing.assert_allclose(detect.knn(detect.fit_knn(train), q, k=10, backend=backend), ref,
                               rtol=1e-4)


def test_vim_against_an_openood_style_numpy_implementation():
  rng = np.random.default_rng(4)
  head = {"kernel": rng.normal(size=(16, 4)).astype(np.float32),
          "bias": rng.normal(size=4).astype(np.float32)}
  train = np.abs(rng.normal(size=(400, 16)))
  q = np.abs(rng.normal(size=(20, 16)))
  w, b = head["kernel"].T.astype(np.float64), head["bias"].astype(np.float64)  # torch layout
  u = -np.linalg.pinv(w) @ b
  ec = EmpiricalCovariance(assume_centered=True).fit(train - u)
  eig_vals, eig_vecs = np.linalg.eig(ec.covariance_)
  ns = np.ascontiguousarray(eig_vecs.T[np.argsort(eig_vals * -1)[6:]].T)
  vlogit_train = np.linalg.norm((train - u) @ ns, axis=-1)
  alpha = (train @ w.T + b).max(axis=-1).mean() / vlogit_train.mean()
  ref = logsumexp(q @ w.T + b, axis=-1) - alpha * np.linalg.norm((q - u) @ ns, axis=-1)
  stats = detect.fit_vim(train, head, dim=6)
  np.testing.assert_allclose(detect.vim(stats, detect.linear_head, head, q), ref, rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="ViM dim"):
    detect.fit_vim(train, head, dim=16)


def test_nac_edges_are_the_references():
  t = nac.edges(50)
  assert len(t) == 50 and t[0] == 0.0 and t[-2] == pytest.approx(1.01) and t[-1] == 1.2
  # the reference's printed values, to their three decimals
  for i, v in [(1, 0.119), (2, 0.184), (23, 0.494), (24, 0.5), (25, 0.506), (47, 0.881)]:
    assert abs(t[i] - v) <= 1e-3, (i, t[i])
  assert np.all(np.diff(t) > 0) and 0.5 in np.round(t, 12)


def test_nac_score_equals_the_dense_mask_reference():
  rng = np.random.default_rng(5)
  fit_o, fit_g = rng.normal(size=(200, 7)), rng.normal(size=(200, 7))
  te_o, te_g = rng.normal(size=(30, 7)), rng.normal(size=(30, 7))
  params = {"layer": {"alpha": 3.0, "M": 50, "O": 4}}
  tables = nac.fit({"layer": (fit_o, fit_g)}, params)
  ours = nac.score(tables, {"layer": (te_o, te_g)})
  # reference: dense [B, M-1, N] bin-membership masks
  t = nac.edges(50)
  sig = lambda a: 1 / (1 + np.exp(-a))
  zf, zt = sig(3.0 * fit_o * fit_g), sig(3.0 * te_o * te_g)
  member = lambda z: (z[:, None, :] >= t[None, :-1, None]) & (z[:, None, :] < t[None, 1:, None])
  counts = member(zf).sum(0)
  cov = np.minimum(counts / 4, 1.0)
  ref = (member(zt) * cov[None]).sum(1).mean(1)
  np.testing.assert_allclose(ours, ref, rtol=1e-6)


def test_nac_pooled_gradients_at_the_penultimate_layer_match_the_closed_form():
  model = models.create("cnn002", 4)
  params, _ = models.init(model, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  params["head"]["kernel"] = normal(1, (200, 4))
  x = uniform(2, (6, 28, 28, 1))
  pooled = nac.pooled_states(model, {"params": params}, x, ("block1", "features"))
  logits, feats = model.apply({"params": params}, x)
  p = softmax(np.asarray(logits, np.float64), axis=1)
  # d/dh sum_c -log_softmax(z)_c / C = (p - 1/C) W^T
  g_ref = (p - 0.25) @ np.asarray(params["head"]["kernel"], np.float64).T
  np.testing.assert_allclose(pooled["features"][0], feats, rtol=1e-5, atol=1e-5)
  # float32 sums of O(1) terms: absolute error ~1e-6 against gradients of O(1)
  np.testing.assert_allclose(pooled["features"][1], g_ref, rtol=1e-4, atol=1e-5)
  assert np.abs(g_ref).max() > 0.5
  assert pooled["block1"][0].shape == (6, 32) and pooled["block1"][1].shape == (6, 32)


def _digits_cnn002(digits9, n: int, **kw):
  """A detection `Model` of a CNN002 with seeded random weights (a non-zero head) over the
  first n digits training images."""
  from ncg_jax.detect.registry import Model
  model = models.create("cnn002", 9)
  params, _ = models.init(model, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  params["head"]["kernel"] = 0.1 * normal(1, (200, 9))
  return Model(Trained(model, params, {}), digits9.train.x[:n], digits9.train.y[:n], 9, **kw)


def test_odin_search_takes_one_gradient_per_temperature_with_the_scores_of_one_by_one(
    digits9, monkeypatch):
  """The registry scores ODIN's grid (4 temperatures x 2 epsilons) with one gradient per
  temperature and batch, and gives each point the bits of scoring it alone."""
  from ncg_jax.detect import aps
  from ncg_jax.detect.registry import Inputs
  m = _digits_cnn002(digits9, 100)
  s = Inputs(m, digits9.ood.x[:50])
  det = detect.DETECTORS.get("odin")
  points = aps.grid_points(det.grid(m))
  calls = []
  direction = gradients._odin_direction
  monkeypatch.setattr(gradients, "_odin_direction",
                      lambda *a: (calls.append(1), direction(*a))[1])
  alone = [det.score(m, s, hp) for hp in points]
  assert len(points) == 8 and len(calls) == 8
  grouped = det.score_points(m, s, points)
  assert len(calls) == 8 + 4
  for a, g in zip(alone, grouped):
    assert a.dtype == g.dtype == np.float32 and np.array_equal(a, g)
  assert not np.array_equal(alone[0], alone[1])  # the epsilons do differ


def test_search_reads_only_validation_inputs_and_picks_the_best_auroc(digits9):
  from ncg_jax.detect.aps import search
  from ncg_jax.detect.registry import Inputs, score
  rng = np.random.default_rng(0)
  m = _digits_cnn002(digits9, 300, nac_subset=90)
  v_id, v_ood = Inputs(m, digits9.test.x[:40]), Inputs(m, digits9.ood.x[:30])
  t_id = Inputs(m, digits9.test.x[40:80])
  t_ood = Inputs(m, rng.integers(0, 256, (30, 28, 28, 1), dtype=np.uint8))
  for name in detect.DETECTORS.names():
    state, hp, trace = search(name, m, v_id, v_ood)
    if trace:
      best = max(a for _, a in trace)
      assert [a for h, a in trace if h == hp][0] == best
    for t in (t_id, t_ood):  # the test inputs were never evaluated during the search
      assert "_outputs" not in t.__dict__ and "nac_pooled" not in t.__dict__
  s = score("msp", None, t_id, {})
  assert s.shape == (40,) and np.all(np.isfinite(s))


def test_mahalanobis_preprocessing_on_a_linear_feature_map():
  rng = np.random.default_rng(6)
  a = rng.normal(size=(5, 3)).astype(np.float32)
  y = rng.integers(0, 2, 200)
  h = rng.normal(size=(200, 3)) + 2 * y[:, None]
  stats = detect.fit_mahalanobis(h, y, 2)
  x = rng.random((15, 5)).astype(np.float32)
  eps = 0.01
  p, mu = stats["precision"].astype(np.float64), stats["means"].astype(np.float64)
  f = x @ a
  d = np.stack([np.einsum("bi,ij,bj->b", f - m, p, f - m) for m in mu], 1)
  c = d.argmin(1)
  grad = 2 * (f - mu[c]) @ p @ a.T  # d/dx of (xA - mu)^T P (xA - mu), P symmetric
  x2 = x - eps * np.where(grad >= 0, 1.0, -1.0)
  f2 = x2 @ a
  ref = -np.min(np.stack([np.einsum("bi,ij,bj->b", f2 - m, p, f2 - m) for m in mu], 1), 1)
  ours = detect.mahalanobis_preprocessed(lambda xx: xx @ a, stats, x, epsilon=eps)
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_mahalanobis_preprocessing_of_a_plain_flax_network_runs_without_select_and_scatter():
  """Through `as_ncg_jax_layers` (as ODIN): same scores as from XLA's own gradient of the
  network, and no `select_and_scatter` (XLA:CPU's scalar pooling gradient) compiled."""
  x = uniform(1, (128, 8, 8, 1))  # two chunks of 64 on the CPU
  f = plain_flax_net(x, 3)
  stats = detect.fit_mahalanobis(np.asarray(f(x)), np.arange(128) % 2, 2)
  closest = lambda xx: jnp.sum(jnp.min(distances.mahalanobis_distances(stats, f(xx)), axis=-1))
  g = jax.grad(closest)(x)
  ref = detect.mahalanobis(stats, f(x - 0.01 * jnp.where(g >= 0, 1.0, -1.0)))
  np.testing.assert_allclose(detect.mahalanobis_preprocessed(f, stats, x, epsilon=0.01), ref,
                             rtol=1e-5, atol=1e-5)
  hlo = distances._mahalanobis_preprocessed.lower(as_partial(f), stats, x, 0.01).as_text()
  assert "select_and_scatter" not in hlo
  jaxpr = jax.make_jaxpr(distances._mahalanobis_preprocessed)(as_partial(f), stats, x, 0.01)
  assert str(jaxpr).count("scan[") == 1  # chunked gradient, as ODIN's
  assert "select_and_scatter" in jax.jit(jax.grad(closest)).lower(x).as_text()


def test_layer_ensemble_scores_are_per_layer_mahalanobis_of_mean_pooled_maps():
  model = models.create("cnn002", 3)
  params, _ = models.init(model, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  x = np.asarray(uniform(1, (60, 28, 28, 1)))
  y = np.arange(60) % 3
  layers = ("block1", "block2")
  _, inter = model.apply({"params": params}, x, mutable=["intermediates"])
  pooled = {n: np.asarray(inter["intermediates"][n][0]).mean(axis=(1, 2)) for n in layers}
  stats = {n: detect.fit_mahalanobis(pooled[n], y, 3) for n in layers}
  fn = lambda xx: distances.layer_features(model, {"params": params}, xx, layers)
  ours = distances.ensemble_layer_scores(fn, stats, x[:10], epsilon=0.0)
  for j, n in enumerate(layers):
    cov = EmpiricalCovariance().fit(pooled[n] - stats[n]["means"][y])
    ref = [max(-(v - m) @ cov.precision_ @ (v - m) for m in stats[n]["means"]) for v in pooled[n][:10]]
    np.testing.assert_allclose(ours[:, j], ref, rtol=2e-3, atol=2e-3)
  w = distances.fit_ensemble_weights(np.asarray(ours), np.asarray(ours) - 5.0)
  assert w["weights"].shape == (2,)
  # a grid of magnitudes in one pass (one gradient sign per layer) gives each one's scores
  grid = distances.ensemble_layer_scores(fn, stats, x[:10], epsilon=(0.0, 0.01))
  assert grid.shape == (10, 2, 2)
  np.testing.assert_array_equal(grid[:, 0], ours)
  np.testing.assert_array_equal(grid[:, 1], distances.ensemble_layer_scores(fn, stats, x[:10],
                                                                            epsilon=0.01))
  assert not np.array_equal(grid[:, 1], ours)


def test_ash_keeps_exactly_k_activations_of_sparse_features():
  """With fewer than k positive activations (sparse ReLU features) ASH-B still keeps exactly
  k entries, as OpenOOD's scatter into the top-k indices: numpy's stable argsort is the
  oracle (ties towards the lower index)."""
  rng = np.random.default_rng(5)
  h = np.maximum(rng.normal(size=(40, 20)) - 1.2, 0).astype(np.float32)  # mostly zeros
  head = {"kernel": rng.normal(size=(20, 4)).astype(np.float32),
          "bias": rng.normal(size=4).astype(np.float32)}
  k = 20 - round(20 * 0.65)  # p = 65: keep 7
  assert ((h > 0).sum(1) < k).any()
  shaped = np.zeros_like(h)
  for i, row in enumerate(h):
    top = np.argsort(-row, kind="stable")[:k]
    shaped[i, top] = row.sum() / k
  assert np.all((shaped != 0).sum(1) == np.where(h.sum(1) > 0, k, 0))
  ref = logsumexp(shaped @ head["kernel"] + head["bias"], axis=1)
  np.testing.assert_allclose(detect.ash(detect.linear_head, head, h, 65), ref, rtol=1e-5)
