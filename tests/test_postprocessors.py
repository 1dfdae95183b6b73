"""OpenOOD v1.5's other postprocessors, each against a numpy / scipy / scikit-learn oracle
written here from the formula (per example, with loops where the original loops)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import log_softmax, logsumexp, softmax
from scipy.stats import entropy as scipy_entropy
from sklearn.covariance import EmpiricalCovariance

from ncg_jax import detect, models
from ncg_jax.detect import nac


@pytest.fixture(autouse=True)
def highest_precision():
  jax.config.update("jax_default_matmul_precision", "highest")
  yield
  jax.config.update("jax_default_matmul_precision", None)


def linear(n=40, d=12, c=5, seed=0):
  rng = np.random.default_rng(seed)
  head = {"kernel": rng.normal(size=(d, c)).astype(np.float32),
          "bias": rng.normal(size=c).astype(np.float32)}
  h = np.abs(rng.normal(size=(n, d))).astype(np.float32)
  return head, h, h @ head["kernel"] + head["bias"]


def test_entropy_gen_and_temperature_scaling():
  z = np.random.default_rng(1).normal(size=(30, 7)) * 2
  p = softmax(z, axis=1)
  np.testing.assert_allclose(detect.entropy(z), -scipy_entropy(p, axis=1), rtol=1e-5, atol=1e-6)
  for gamma, m in ((0.1, 3), (2.0, 100)):
    top = np.sort(p, axis=1)[:, -min(m, 7):]
    np.testing.assert_allclose(detect.gen(z, gamma, m),
                               -np.sum(top ** gamma * (1 - top) ** gamma, axis=1), rtol=1e-5)
  y = np.random.default_rng(2).integers(0, 7, 30)
  t = detect.fit_temperature(z, y)
  grid = np.exp(np.linspace(np.log(0.01), np.log(100), 20001))
  nll = [-log_softmax(z / g, axis=1)[np.arange(30), y].mean() for g in grid]
  assert abs(np.log(t) - np.log(grid[int(np.argmin(nll))])) < 1e-3
  np.testing.assert_allclose(detect.temp_scale(z, t), softmax(z / t, axis=1).max(1), rtol=1e-5)


def test_klm_against_scipy_kl_over_class_templates():
  rng = np.random.default_rng(3)
  val = rng.normal(size=(200, 4)) * 2
  test = rng.normal(size=(25, 4)) * 2
  templates = detect.fit_klm(val)
  pv = softmax(val, axis=1)
  ref_t = np.stack([pv[pv.argmax(1) == c].mean(0) for c in range(4)])
  np.testing.assert_allclose(templates, ref_t, rtol=1e-5)
  pt = softmax(test, axis=1)
  ref = [-min(scipy_entropy(p, q) for q in ref_t) for p in pt]
  np.testing.assert_allclose(detect.klm(templates, test), ref, rtol=1e-4, atol=1e-6)


def test_dice_she_fdbd_against_numpy():
  head, h, z = linear(seed=4)
  train_h = np.abs(np.random.default_rng(5).normal(size=(100, 12)))
  # DICE: W [C, D] as OpenOOD, contribution mean(h)[j] * W[c, j] above its 90th percentile
  w = head["kernel"].T
  contrib = train_h.mean(0)[None, :] * w
  masked = w * (contrib > np.percentile(contrib, 90))
  ref = logsumexp(h @ masked.T + head["bias"], axis=1)
  mask = detect.dice_mask(train_h, head, 90)
  np.testing.assert_allclose(detect.dice(head, mask, h), ref, rtol=1e-5)
  # SHE: stored mean feature of correctly classified training examples per class
  train_y = np.random.default_rng(6).integers(0, 5, 100)
  train_z = train_h @ head["kernel"] + head["bias"]
  pats = detect.fit_she(train_h, train_z, train_y, 5)
  for c in range(5):
    ok = (train_z.argmax(1) == train_y) & (train_y == c)
    if ok.any():
      np.testing.assert_allclose(pats[c], train_h[ok].mean(0), rtol=1e-5)
  ref = [hi @ pats[zi.argmax()] for hi, zi in zip(h, z)]
  np.testing.assert_allclose(detect.she(pats, z, h), ref, rtol=1e-5)
  # fDBD, one example at a time as the paper's formula
  mean = train_h.mean(0)
  den = detect.fdbd_denominators(head)
  for use_mean in (True, False):
    ref = []
    for hi, zi in zip(h, z):
      p = zi.argmax()
      total = sum(abs(zi[p] - zi[c]) / np.linalg.norm(w[p] - w[c]) for c in range(5) if c != p)
      ref.append(total / np.linalg.norm(hi - (mean if use_mean else 0)))
    np.testing.assert_allclose(detect.fdbd(head, den, h, mean if use_mean else None), ref, rtol=1e-4)


@pytest.mark.parametrize("variant", ["p", "s"])
def test_ash_p_and_s_and_scale_against_numpy(variant):
  head, h, _ = linear(d=20, seed=7)
  k = 20 - round(20 * 0.7)
  out = np.zeros_like(h)
  for i, row in enumerate(h):
    top = np.argsort(-row, kind="stable")[:k]
    out[i, top] = row[top]
    if variant == "s":
      out[i] *= np.exp(row.sum() / row[top].sum())
  ref = logsumexp(out @ head["kernel"] + head["bias"], axis=1)
  np.testing.assert_allclose(detect.ash(detect.linear_head, head, h, 70, variant), ref, rtol=1e-5)
  scaled = np.stack([row * np.exp(row.sum() / np.sort(row)[-k:].sum()) for row in h])
  np.testing.assert_allclose(detect.scale(detect.linear_head, head, h, 70),
                             logsumexp(scaled @ head["kernel"] + head["bias"], axis=1), rtol=1e-5)


def test_ash_mask_is_top_k_order_for_every_k_and_one_program_per_shape():
  """ASH's and SCALE's mask keeps the k first entries of each row in `lax.top_k`'s order
  (IEEE total order, 0.0 above -0.0; ties towards the lower index), for every k, on rows
  with ties, signed zeros and infinities; numpy sorts by the (total-order key, index) pairs
  as the oracle. k is an argument, so a grid of percentiles compiles one program."""
  from ncg_jax.detect import scores
  rng = np.random.default_rng(11)
  h = np.round(rng.normal(size=(30, 16)), 0).astype(np.float32)  # many ties
  h[:, ::5] = -0.0
  h[3, 4], h[4, 7], h[5, 1] = np.inf, -np.inf, 0.0
  bits = h.view(np.uint32).astype(np.int64)
  key = np.where(bits >> 31 == 1, -bits, bits)  # increasing in IEEE total order
  mask = jax.jit(scores._top_k_mask)
  for k in range(1, 17):
    ref = np.zeros(h.shape, bool)
    for i in range(len(h)):
      ref[i, sorted(range(16), key=lambda j: (-key[i, j], j))[:k]] = True
    np.testing.assert_array_equal(mask(h, k), ref)
  head, feats, _ = linear(d=20, seed=3)
  before = scores._ash._cache_size(), scores._scale._cache_size()
  for p in (65, 80, 95):
    detect.ash(detect.linear_head, head, feats[:7], p, "p")
    detect.scale(detect.linear_head, head, feats[:7], p)
  # at most one new program each (none if another test compiled this shape already)
  assert scores._ash._cache_size() <= before[0] + 1
  assert scores._scale._cache_size() <= before[1] + 1


def test_rmds_against_sklearn_covariances():
  rng = np.random.default_rng(8)
  y = rng.integers(0, 3, 300)
  h = rng.normal(size=(300, 4)) + 2.0 * np.eye(4)[y % 4]
  q = rng.normal(size=(20, 4))
  stats = detect.fit_rmds(h, y, 3)
  means = np.stack([h[y == c].mean(0) for c in range(3)])
  p_class = EmpiricalCovariance().fit(h - means[y]).precision_
  p_bg = EmpiricalCovariance().fit(h).precision_
  mu = h.mean(0)
  ref = [max(-(v - m) @ p_class @ (v - m) + (v - mu) @ p_bg @ (v - mu) for m in means) for v in q]
  np.testing.assert_allclose(detect.rmds(stats, q), ref, rtol=1e-3, atol=1e-3)


def test_nnguide_and_relation_against_brute_force():
  rng = np.random.default_rng(9)
  train_h = np.abs(rng.normal(size=(300, 6))).astype(np.float32)
  train_z = rng.normal(size=(300, 4)).astype(np.float32)
  h = np.abs(rng.normal(size=(15, 6))).astype(np.float32)
  z = rng.normal(size=(15, 4)).astype(np.float32)
  norm = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True) + 1e-10
  bank = detect.fit_nnguide(train_h, train_z, fraction=0.1, k=20, seed=0)
  idx = np.sort(np.random.default_rng(0).permutation(300)[:30])
  ref_bank = norm(train_h[idx]) * logsumexp(train_z[idx], axis=1)[:, None]
  np.testing.assert_allclose(bank, ref_bank, rtol=1e-5)
  sims = norm(h) @ ref_bank.T
  ref = np.sort(sims, axis=1)[:, -20:].mean(1) * logsumexp(z, axis=1)
  np.testing.assert_allclose(detect.nnguide(bank, z, h, k=20), ref, rtol=1e-4)
  rel = detect.fit_relation(train_h, train_z)
  hn = h / np.linalg.norm(h, axis=1, keepdims=True)
  tn = train_h / np.linalg.norm(train_h, axis=1, keepdims=True)
  for power in (1, 4):
    ref = []
    for hi, pi in zip(hn, softmax(z, axis=1)):
      r = np.maximum(tn @ hi, 0) * (softmax(train_z, axis=1) @ pi)
      ref.append(np.sum(np.where(np.abs(r) > 0.03, np.sign(r) * np.abs(r) ** power, 0)))
    np.testing.assert_allclose(detect.relation(rel, z, h, power), ref, rtol=1e-4)


def test_nac_setups_are_the_reference_grids():
  sizes = {("resnet18", "cifar10"): 256, ("resnet18", "cifar100"): 288,
           ("resnet50", "imagenet"): 576, ("vit_b_16", "imagenet"): 256}
  for (arch, bench), n in sizes.items():
    layers = ("features", "layer1", "layer2", "layer3", "layer4") if arch.startswith("resnet") \
        else ("features",) + tuple(f"encoder_layer_{i}/ln_2_out" for i in range(12))
    setup = nac.setup(arch, bench, 32, layers)
    assert setup.source.startswith("ood_coverage")
    assert int(np.prod([len(v) for v in nac.grid(setup).values()])) == n
  # M reaches 1,000 and the defaults come first (CIFAR-100 layer3: O 500, M 1000, alpha 10)
  g = nac.setup("resnet18", "cifar100", 32, ("features", "layer1", "layer2", "layer3")).grid
  assert (g["layer3"]["O"][0], g["layer3"]["M"][0], g["layer3"]["alpha"][0]) == (500, 1000, 10)
  assert nac.setup("cnn002", None, 28, ("block1", "features")).source == "ncg_jax fallback"


def test_nac_cached_search_equals_a_direct_fit():
  rng = np.random.default_rng(10)
  pooled = {"features": (rng.normal(size=(80, 6)), rng.normal(size=(80, 6))),
            "layer3": (rng.normal(size=(80, 5)), rng.normal(size=(80, 5)) * 0.1)}
  test = {k: (o[:20] * 1.3, g[:20]) for k, (o, g) in pooled.items()}
  setup = nac.Setup({"avgpool": "features", "layer3": "layer3"},
                    {"avgpool": {"O": [5, 50], "M": [50], "alpha": [1.0]},
                     "layer3": {"O": [10], "M": [50, 500], "alpha": [10.0]}}, "test")
  fitted = nac.Fitted(setup, pooled)
  hp = {"avgpool_O": 5, "avgpool_M": 50, "avgpool_alpha": 1.0,
        "layer3_O": 10, "layer3_M": 500, "layer3_alpha": 10.0}
  direct = nac.score(nac.fit(pooled, {"features": {"alpha": 1.0, "M": 50, "O": 5},
                                      "layer3": {"alpha": 10.0, "M": 500, "O": 10}}), test)
  np.testing.assert_allclose(fitted.score(hp, test, "t"), direct, rtol=1e-6)
  np.testing.assert_allclose(fitted.score(hp, test, "t"), direct, rtol=1e-6)  # cached


def test_vit_nac_layers_read_the_class_token_of_ln_2():
  model = models.create("vit_b_16", 3, image_size=32, patch=8, hidden=16, depth=12, heads=2, mlp=32)
  x = jnp.asarray(np.random.default_rng(11).random((4, 32, 32, 3)), jnp.float32)
  params, _ = models.init(model, jax.random.key(0), x)
  available = nac.perturbed_layers(model, x)
  setup = nac.setup("vit_b_16", "imagenet", 32, available)
  assert setup.source.endswith("vit/nac_imagenet.yml")
  layers = tuple(setup.layers.values())
  pooled = nac.pooled_states(model, {"params": params}, x, layers)
  (logits, _), inter = jax.jit(lambda v, xx: model.apply(v, xx, train=False, mutable=["intermediates"]))(
      {"params": params}, x)
  ln2 = inter["intermediates"]["encoder_layer_11"]["ln_2_out"][0]
  np.testing.assert_allclose(pooled["encoder_layer_11/ln_2_out"][0], ln2[:, 0], rtol=1e-5, atol=1e-5)
  # at the final class token the gradient has the closed form W (softmax - 1/C)
  w = params["head"]["kernel"]
  ref = (jax.nn.softmax(logits) - 1 / 3) @ w.T
  np.testing.assert_allclose(pooled["features"][1], ref, rtol=1e-4, atol=1e-6)
