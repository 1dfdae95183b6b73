"""OOD detection metrics, exact on ties. Scores are "ID-ness": higher means in-distribution.

`evaluate(scores_id, scores_ood)` returns
  auroc          P(s_id > s_ood) + P(tie)/2 (Mann-Whitney), the trapezoidal ROC area;
  aupr_in        average precision with ID as the positive class (precision from counts);
  aupr_out       average precision with OOD as the positive class, score -s;
  fpr95          fraction of OOD accepted at the highest threshold accepting >= 95% of ID
                 (ID positive: the ODIN and GradNorm papers' FPR at 95% TPR);
  fpr95_openood  fraction of ID rejected at the first threshold rejecting >= 95% of OOD
                 (OOD positive: OpenOOD v1.5's `fpr[argmax(tpr >= 0.95)]`);
  detection_error  min over thresholds of (P(ID rejected) + P(OOD accepted)) / 2.
Average precision is sum_k (R_k - R_{k-1}) P_k over distinct thresholds, as scikit-learn's
`average_precision_score`; the ODIN code computed precision from rates, which is only right
for equal ID and OOD counts.
"""
import numpy as np


def _check(scores: np.ndarray, name: str) -> np.ndarray:
  s = np.asarray(scores, np.float64).reshape(-1)
  if s.size == 0:
    raise ValueError(f"{name} is empty")
  if not np.all(np.isfinite(s)):
    bad = int(np.sum(~np.isfinite(s)))
    raise ValueError(f"{name} holds {bad} non-finite score(s) (NaN or inf); a detector "
                     "must return finite scores")
  return s


def curve(pos: np.ndarray, neg: np.ndarray):
  """Counts at every distinct threshold t (descending) for the rule `score >= t`:
  (thresholds, true positives, false positives), starting from the empty acceptance."""
  scores = np.concatenate([pos, neg])
  is_pos = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
  order = np.argsort(-scores, kind="mergesort")
  scores, is_pos = scores[order], is_pos[order]
  last = np.r_[np.flatnonzero(np.diff(scores) != 0), len(scores) - 1]  # end of each tie group
  tp = np.r_[0.0, np.cumsum(is_pos)[last]]
  fp = np.r_[0.0, np.cumsum(1 - is_pos)[last]]
  return np.r_[np.inf, scores[last]], tp, fp


def average_precision(pos: np.ndarray, neg: np.ndarray) -> float:
  _, tp, fp = curve(pos, neg)
  precision = tp[1:] / (tp[1:] + fp[1:])
  recall = tp / len(pos)
  return float(np.sum(np.diff(recall) * precision))


def evaluate(scores_id, scores_ood) -> dict[str, float]:
  s_id, s_ood = _check(scores_id, "scores_id"), _check(scores_ood, "scores_ood")
  n_id, n_ood = len(s_id), len(s_ood)
  _, tp, fp = curve(s_id, s_ood)
  tpr, fpr = tp / n_id, fp / n_ood                   # ID accepted, OOD accepted
  auroc = float(np.trapezoid(tpr, fpr))
  fpr95 = float(fpr[np.argmax(tpr >= 0.95)])         # first (highest) threshold reaching 95%
  _, tp_o, fp_o = curve(-s_ood, -s_id)               # OOD positive on -score
  fpr95_openood = float((fp_o / n_id)[np.argmax(tp_o / n_ood >= 0.95)])
  return {
      "auroc": auroc,
      "aupr_in": average_precision(s_id, s_ood),
      "aupr_out": average_precision(-s_ood, -s_id),
      "fpr95": fpr95,
      "fpr95_openood": fpr95_openood,
      "detection_error": float(np.min(0.5 * ((1 - tpr) + fpr))),
      "n_id": n_id, "n_ood": n_ood,
  }


def roc(scores_id, scores_ood) -> tuple[np.ndarray, np.ndarray]:
  """(fpr, tpr) of the rule `score >= t` with ID positive, for plotting."""
  s_id, s_ood = _check(scores_id, "scores_id"), _check(scores_ood, "scores_ood")
  _, tp, fp = curve(s_id, s_ood)
  return fp / len(s_ood), tp / len(s_id)
