import numpy as np
from scipy import stats

from ncg_jax import ncg


def test_ncg_score():
  assert ncg.ncg_score(np.array([0, 1, 2, 3]), np.array([0, 1, 0, 0])) == 0.5


def test_chisquare_uniform_matches_the_hand_formula():
  rng = np.random.default_rng(0)
  pred, nn = rng.integers(0, 9, 500), rng.integers(0, 9, 500)
  pred[:100] = nn[:100]
  m = int((pred == nn).sum())
  n, K = 500, 9
  exp = np.array([n * (K - 1) / K, n / K])
  chi2 = ((n - m) - exp[0]) ** 2 / exp[0] + (m - exp[1]) ** 2 / exp[1]
  res = ncg.chisquare_uniform(pred, nn, K)
  np.testing.assert_allclose(res["statistic"], chi2, rtol=1e-12)
  np.testing.assert_allclose(res["pvalue"], stats.chi2.sf(chi2, df=1), rtol=1e-10)
  # the paper's call, verbatim in form: chisquare(bincount(match), [N(K-1)/K, N/K])
  paper = stats.chisquare(np.bincount(pred == nn), [n * (K - 1) / K, n / K])
  np.testing.assert_allclose(res["pvalue"], paper.pvalue, rtol=1e-10)


def test_class_frequency_null():
  # predictions and neighbours both always class 0: chance agreement is 1, and a perfect
  # match is exactly what chance predicts (statistic 0), while the 1/K null calls it extreme
  pred = np.zeros(50, int)
  nn = np.zeros(50, int)
  nn[:5] = 1
  p_pred = np.array([1.0, 0.0, 0.0])
  p_nn = np.array([45, 5, 0]) / 50
  assert ncg.chance_agreement(pred, nn, 3) == np.dot(p_pred, p_nn)
  res = ncg.chisquare_class_frequency(pred, nn, 3)
  assert abs(res["chance_match_rate"] - 0.9) < 1e-12
  assert res["statistic"] < 1e-9 and res["pvalue"] > 0.99
  assert ncg.chisquare_uniform(pred, nn, 3)["pvalue"] < 1e-9


def test_ncg_vs_distance_equal_count_bins():
  rng = np.random.default_rng(0)
  dist = rng.random(103)
  match = dist < 0.5  # NCG falls with distance
  pred = np.where(match, 1, 2)
  nn = np.ones(103, int)
  out = ncg.ncg_vs_distance(pred, nn, dist, n_bins=5)
  order = np.argsort(dist)
  ref_bins = np.array_split(order, 5)
  assert out["count"] == [len(b) for b in ref_bins]
  np.testing.assert_allclose(out["mean"], [match[b].mean() for b in ref_bins])
  np.testing.assert_allclose(out["sem"], [stats.sem(match[b].astype(float)) for b in ref_bins])
  assert out["mean"][0] == 1.0 and out["mean"][-1] == 0.0
  assert all(lo <= hi for lo, hi in zip(out["dist_lo"], out["dist_hi"]))


def test_conditional_accuracy_welch_by_hand():
  rng = np.random.default_rng(0)
  y = rng.integers(0, 5, 400)
  nn_y = np.where(rng.random(400) < 0.5, y, rng.integers(0, 5, 400))
  pred = np.where(rng.random(400) < 0.6, nn_y, rng.integers(0, 5, 400))
  r = ncg.conditional_accuracy(pred, y, nn_y)
  holds = pred == nn_y
  a, b = (pred == y)[holds].astype(float), (pred == y)[~holds].astype(float)
  va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
  t = (a.mean() - b.mean()) / np.sqrt(va + vb)
  dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
  from scipy.special import stdtr
  p = 1 - stdtr(dof, t)  # one-sided: first group more accurate
  assert r["n_holds"] == holds.sum() and np.isclose(r["acc_ncg_holds"], a.mean())
  assert np.isclose(r["welch_t"], t) and np.isclose(r["welch_p"], p)


def test_paired_summary_mean_and_sem():
  rob, nat = np.array([0.3, 0.5, 0.4, 0.2]), np.array([0.1, 0.25, 0.2, 0.0])
  s = ncg.paired_summary(rob, nat)
  d = rob - nat
  assert np.isclose(s["diff_mean"], d.mean()) and np.isclose(s["diff_sem"], d.std(ddof=1) / 2)
  r = rob[:3] / nat[:3]  # the natural-NCG-zero cell has no ratio
  assert s["n_ratio_cells"] == 3 and np.isclose(s["ratio_mean"], r.mean())
  assert np.isclose(s["ratio_sem"], r.std(ddof=1) / np.sqrt(3))


def test_slope_vs_severity_and_correlation_closed_forms():
  from scipy import stats
  from ncg_jax.ncg import distance_accuracy_correlation, mean_sem, slope_vs_severity
  sev = np.arange(1, 6)
  rng = np.random.default_rng(0)
  nat = 0.9 - 0.05 * sev + rng.normal(0, 0.01, 5)
  rob = 0.9 - 0.01 * sev + rng.normal(0, 0.01, 5)
  r = slope_vs_severity(sev, rob, nat)
  # slopes by the normal equations
  slope = lambda y: np.sum((sev - sev.mean()) * (y - y.mean())) / np.sum((sev - sev.mean()) ** 2)
  assert np.isclose(r["slope_robust"], slope(rob)) and np.isclose(r["slope_natural"], slope(nat))
  se = lambda y: np.sqrt(np.sum((y - (y.mean() + slope(y) * (sev - sev.mean()))) ** 2) / 3
                         / np.sum((sev - sev.mean()) ** 2))
  # Welch/pooled t with equal n and the slopes' sd = se * sqrt(n): (b1 - b2) / sqrt(se1^2 + se2^2)
  t = (slope(rob) - slope(nat)) / np.sqrt(se(rob) ** 2 + se(nat) ** 2)
  assert np.isclose(r["t"], t) and r["t"] > 0 and r["pvalue"] < 0.05
  assert np.isclose(r["pvalue"], 2 * stats.t.sf(abs(t), 8))
  c = distance_accuracy_correlation([1.0, 2.0, 3.0, 4.0], [0.9, 0.7, 0.5, 0.3])
  assert np.isclose(c["r"], -1.0)
  m = mean_sem([0.2, 0.4, 0.6])
  assert np.isclose(m["mean"], 0.4) and np.isclose(m["sem"], 0.2 / np.sqrt(3))
