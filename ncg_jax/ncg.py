"""Nearest category generalization (Yang et al., TMLR 2022) as pure numpy/scipy functions.

NCG is the fraction of OOD inputs whose predicted label equals the training label of their
nearest training input (`ncg_score(pred, nn_label)`). The paper's significance test is a
2-cell chi-square goodness of fit of [mismatch, match] counts against random guessing over
the K training classes (`chisquare_uniform`); `chisquare_class_frequency` replaces the 1/K
null by the chance agreement sum_c p_pred(c) p_nn(c), which accounts for imbalanced
predictions and neighbour labels.
"""
import numpy as np
from scipy import stats


def ncg_score(pred: np.ndarray, nn_label: np.ndarray) -> float:
  pred, nn_label = np.asarray(pred), np.asarray(nn_label)
  if pred.shape != nn_label.shape or pred.size == 0:
    raise ValueError(f"need equal non-empty shapes, got {pred.shape} and {nn_label.shape}")
  return float(np.mean(pred == nn_label))


def _chisquare(match: np.ndarray, p_match: float) -> dict:
  n = match.size
  observed = np.array([n - match.sum(), match.sum()], dtype=np.float64)
  expected = np.array([n * (1.0 - p_match), n * p_match])
  res = stats.chisquare(observed, expected)
  return {"statistic": float(res.statistic), "pvalue": float(res.pvalue),
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
