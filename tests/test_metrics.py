import numpy as np
import pytest
from sklearn import metrics as skm

from ncg_jax.detect import metrics


def sk_reference(s_id, s_ood):
  y = np.r_[np.ones(len(s_id)), np.zeros(len(s_ood))]
  s = np.r_[s_id, s_ood]
  fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
  ofpr, otpr, _ = skm.roc_curve(1 - y, -s, drop_intermediate=False)
  return {
      "auroc": skm.roc_auc_score(y, s),
      "aupr_in": skm.average_precision_score(y, s),
      "aupr_out": skm.average_precision_score(1 - y, -s),
      "fpr95": fpr[np.argmax(tpr >= 0.95)],
      "fpr95_openood": ofpr[np.argmax(otpr >= 0.95)],
      "detection_error": np.min(0.5 * (1 - tpr + fpr)),
  }


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("tied", [False, True])
def test_against_scikit_learn(seed, tied):
  rng = np.random.default_rng(seed)
  s_id = rng.normal(1.0, 1.0, size=300 + 37 * seed)
  s_ood = rng.normal(0.0, 1.2, size=120 + 11 * seed)
  if tied:  # heavy ties, also across ID and OOD
    s_id, s_ood = np.round(s_id * 2) / 2, np.round(s_ood * 2) / 2
  ours, ref = metrics.evaluate(s_id, s_ood), sk_reference(s_id, s_ood)
  for k, v in ref.items():
    np.testing.assert_allclose(ours[k], v, rtol=1e-12, atol=1e-12, err_msg=k)


def test_fpr95_conventions_on_hand_made_cases():
  # 20 ID scores 1..20, OOD scores 0.5..10.5 (10 of them)
  s_id = np.arange(1, 21, dtype=float)
  s_ood = np.arange(10, dtype=float) + 0.5
  m = metrics.evaluate(s_id, s_ood)
  # accept 95% of ID (19 of 20): threshold 2 -> OOD >= 2 are 2.5..9.5: 8 of 10
  assert m["fpr95"] == 0.8
  # reject 95% of OOD (all 10 for 95%: 9.5 of 10 rounds up): threshold at -score >= -9.5,
  # i.e. score <= 9.5: ID 1..9 rejected -> 9 / 20
  assert m["fpr95_openood"] == 0.45
  # perfect separation
  p = metrics.evaluate([2.0, 3.0], [0.0, 1.0])
  assert p["auroc"] == 1.0 and p["fpr95"] == 0.0 and p["fpr95_openood"] == 0.0
  assert p["detection_error"] == 0.0 and p["aupr_in"] == 1.0 and p["aupr_out"] == 1.0
  # all tied: chance
  t = metrics.evaluate(np.ones(10), np.ones(30))
  assert t["auroc"] == 0.5 and t["fpr95"] == 1.0 and t["aupr_in"] == 0.25


def test_rate_based_aupr_bug_is_not_reproduced():
  rng = np.random.default_rng(0)
  s_id, s_ood = rng.normal(1, 1, 9000), rng.normal(0, 1, 3000)
  ours = metrics.evaluate(s_id, s_ood)["aupr_in"]
  y = np.r_[np.ones(9000), np.zeros(3000)]
  assert abs(ours - skm.average_precision_score(y, np.r_[s_id, s_ood])) < 1e-12
  assert ours > 0.85  # the rate-based ODIN figure is ~0.70 on this imbalance


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_are_an_error(bad):
  with pytest.raises(ValueError, match="non-finite"):
    metrics.evaluate([1.0, bad], [0.0])
  with pytest.raises(ValueError, match="non-finite"):
    metrics.evaluate([1.0], [0.0, bad])
