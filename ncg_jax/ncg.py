"""Nearest category generalization (Yang et al., TMLR 2022) as pure numpy/scipy functions.

NCG is the fraction of OOD inputs whose predicted label equals the training label of their
nearest training input (`ncg_score(pred, nn_label)`). The paper's significance test is a
2-cell chi-square goodness of fit of [mismatch, match] counts against random guessing over
the K training classes (`chisquare_uniform`); `chisquare_class_frequency` replaces the 1/K
null by the chance agreement sum_c p_pred(c) p_nn(c), which accounts for imbalanced
predictions and neighbour labels.
"""
import numpy as np


def ncg_score(pred: np.ndarray, nn_label: np.ndarray) -> float:
  pred, nn_label = np.asarray(pred), np.asarray(nn_label)
  if pred.shape != nn_label.shape or pred.size == 0:
    raise ValueError(f"need equal non-empty shapes, got {pred.shape} and {nn_label.shape}")
  return float(np.mean(pred == nn_label))


def _chisquare(match: np.ndarray, p_match: float) -> dict:
  from scipy import stats
  n = match.size
  observed = np.array([n - match.sum(), match.sum()], dtype=np.float64)
  expected = np.array([n * (1.0 - p_match), n * p_match])
  if 0.0 < p_match < 1.0:
    res = stats.chisquare(observed, expected)
    statistic, pvalue = float(res.statistic), float(res.pvalue)
  else:  # a null that allows only one outcome has no chi-square test
    statistic = pvalue = float("nan")
  return {"statistic": statistic, "pvalue": pvalue,
          "observed_match_rate": float(match.mean()), "chance_match_rate": float(p_match),
          "n": int(n)}


def chisquare_uniform(pred: np.ndarray, nn_label: np.ndarray, num_classes: int) -> dict:
  """The paper's test (Table 1): null match rate 1/K."""
  return _chisquare(np.asarray(pred) == np.asarray(nn_label), 1.0 / num_classes)


def chance_agreement(pred: np.ndarray, nn_label: np.ndarray, num_classes: int) -> float:
  """sum_c p_pred(c) p_nn(c): the match rate of independent draws from both marginals."""
  p_pred = np.bincount(pred, minlength=num_classes) / len(pred)
  p_nn = np.bincount(nn_label, minlength=num_classes) / len(nn_label)
  return float(np.dot(p_pred, p_nn))


def chisquare_class_frequency(pred: np.ndarray, nn_label: np.ndarray, num_classes: int) -> dict:
  pred, nn_label = np.asarray(pred), np.asarray(nn_label)
  return _chisquare(pred == nn_label, chance_agreement(pred, nn_label, num_classes))


def ncg_vs_distance(pred: np.ndarray, nn_label: np.ndarray, nn_dist: np.ndarray,
                    n_bins: int = 5) -> dict:
  """NCG in `n_bins` equal-count bins of neighbour distance (the paper's Fig. 5):
  mean ± SEM of the match indicator per bin, with the bins' distance ranges."""
  from scipy import stats
  match = (np.asarray(pred) == np.asarray(nn_label)).astype(np.float64)
  order = np.argsort(np.asarray(nn_dist), kind="stable")
  bins = np.array_split(order, n_bins)
  dist = np.asarray(nn_dist)
  return {
      "mean": [float(match[b].mean()) for b in bins],
      "sem": [float(stats.sem(match[b])) if len(b) > 1 else float("nan") for b in bins],
      "count": [int(len(b)) for b in bins],
      "dist_lo": [float(dist[b].min()) for b in bins],
      "dist_hi": [float(dist[b].max()) for b in bins],
      "dist_mean": [float(dist[b].mean()) for b in bins],
  }


def summarize(pred: np.ndarray, nn_label: np.ndarray, nn_dist: np.ndarray,
              num_classes: int) -> dict:
  """Every NCG figure of one (model, space) pair on one query set."""
  return {
      "ncg": ncg_score(pred, nn_label),
      "chisquare_uniform": chisquare_uniform(pred, nn_label, num_classes),
      "chisquare_class_frequency": chisquare_class_frequency(pred, nn_label, num_classes),
      "ncg_vs_distance": ncg_vs_distance(pred, nn_label, nn_dist),
      "mean_nn_dist": float(np.mean(nn_dist)),
  }


def conditional_accuracy(pred: np.ndarray, label: np.ndarray, nn_label: np.ndarray) -> dict:
  """Accuracy where NCG holds (pred == nn label) vs where it fails, and the paper's one-sided
  Welch t-test (`ttest_ind(equal_var=False, alternative="greater")`) of the per-example
  correctness of the first group against the second. For labelled OOD-ish inputs such as
  corrupted test images. NaN statistics where a group has fewer than two examples."""
  from scipy import stats
  correct = (np.asarray(pred) == np.asarray(label)).astype(np.float64)
  holds = np.asarray(pred) == np.asarray(nn_label)
  a, b = correct[holds], correct[~holds]
  t, p = (stats.ttest_ind(a, b, equal_var=False, alternative="greater")
          if len(a) > 1 and len(b) > 1 else (np.nan, np.nan))
  return {"acc_ncg_holds": float(a.mean()) if len(a) else float("nan"),
          "acc_ncg_fails": float(b.mean()) if len(b) else float("nan"),
          "n_holds": int(len(a)), "n_fails": int(len(b)),
          "welch_t": float(t), "welch_p": float(p)}


def paired_summary(robust: np.ndarray, natural: np.ndarray) -> dict:
  """Robust-minus-natural difference and robust/natural ratio over matched cells (e.g.
  corruption x severity), each as mean and standard error of the mean (`scipy.stats.sem`),
  as the paper's Table 4."""
  from scipy import stats
  robust, natural = np.asarray(robust, np.float64), np.asarray(natural, np.float64)
  diff = robust - natural
  with np.errstate(divide="ignore", invalid="ignore"):
    ratio = robust / natural
  ratio = ratio[np.isfinite(ratio)]
  sem = lambda v: float(stats.sem(v)) if len(v) > 1 else float("nan")
  return {"diff_mean": float(diff.mean()), "diff_sem": sem(diff),
          "ratio_mean": float(ratio.mean()) if len(ratio) else float("nan"), "ratio_sem": sem(ratio),
          "n_cells": int(len(diff)), "n_ratio_cells": int(len(ratio))}


def slope_vs_severity(severity: np.ndarray, robust: np.ndarray, natural: np.ndarray) -> dict:
  """The paper's Table 4 slope test for one corruption: NCG regressed on the severity level
  (`scipy.stats.linregress`) for the robust and the natural model, and the two slopes
  compared with `ttest_ind_from_stats` (each slope's standard deviation taken as its
  standard error times sqrt(n), n = the number of levels)."""
  from scipy import stats
  severity = np.asarray(severity, np.float64)
  fit_r = stats.linregress(severity, np.asarray(robust, np.float64))
  fit_n = stats.linregress(severity, np.asarray(natural, np.float64))
  n = len(severity)
  t, p = stats.ttest_ind_from_stats(fit_r.slope, fit_r.stderr * np.sqrt(n), n,
                                    fit_n.slope, fit_n.stderr * np.sqrt(n), n)
  return {"slope_robust": float(fit_r.slope), "slope_natural": float(fit_n.slope),
          "stderr_robust": float(fit_r.stderr), "stderr_natural": float(fit_n.stderr),
          "t": float(t), "pvalue": float(p), "n_levels": int(n)}


def distance_accuracy_correlation(mean_dist: np.ndarray, accuracy: np.ndarray) -> dict:
  """Pearson r (and its p-value) between cells' mean neighbour distance and accuracy."""
  from scipy import stats
  if len(mean_dist) < 3:
    return {"r": float("nan"), "pvalue": float("nan"), "n": int(len(mean_dist))}
  res = stats.pearsonr(np.asarray(mean_dist, np.float64), np.asarray(accuracy, np.float64))
  return {"r": float(res.statistic), "pvalue": float(res.pvalue), "n": int(len(mean_dist))}


def mean_sem(values) -> dict:
  """Mean and standard error over, e.g., held-out classes (the paper's Table 1 rows)."""
  from scipy import stats
  v = np.asarray(values, np.float64)
  return {"mean": float(v.mean()), "sem": float(stats.sem(v)) if len(v) > 1 else float("nan"),
          "n": int(len(v))}
