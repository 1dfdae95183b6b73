"""Figures written by the experiments (PNG). matplotlib's object API without pyplot: no
global backend is set (a notebook keeps its own) and matplotlib is imported only when a
figure is drawn."""


def _subplots(n: int, figsize, **kw):
  from matplotlib.figure import Figure
  fig = Figure(figsize=figsize)
  return fig, fig.subplots(1, n, squeeze=False, **kw)


def _save(fig, path: str, dpi: int) -> None:
  from ncg_jax import sharding
  sharding.write_file(path, lambda f: fig.savefig(f, dpi=dpi, format="png"))


def ncg_vs_distance(curves: dict[str, dict[str, dict]], path: str, title: str) -> None:
  """curves[space][run] = ncg.ncg_vs_distance(...) output; one panel per space."""
  spaces = list(curves)
  fig, axes = _subplots(len(spaces), (5 * len(spaces), 4))
  for ax, space in zip(axes[0], spaces):
    for run, c in curves[space].items():
      ax.errorbar(c["dist_mean"], c["mean"], yerr=c["sem"], marker="o", capsize=3, label=run)
    _ncg_panel(ax, space, f"distance to nearest training {'image' if space == 'pixel' else 'feature'} (L2)",
               "NCG (mean ± SEM, 5 equal-count bins)")
  fig.suptitle(title)
  fig.tight_layout()
  _save(fig, path, dpi=120)


def _ncg_panel(ax, space: str, xlabel: str, ylabel: str) -> None:
  """Labels, [0, 1] NCG axis, grid and legend of one per-space NCG panel."""
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(f"{space} space")
  ax.set_ylim(-0.02, 1.02)
  ax.grid(alpha=0.3)
  ax.legend()


def radius_histograms(rows: dict[str, dict], path: str, title: str) -> None:
  """rows[run] = {"radii": [...], "ood_dist": [...]}: log-L2 histograms of the robustness
  radii of the attacked neighbours and of the OOD-to-neighbour distances (paper Fig. 3),
  on one shared axis."""
  import numpy as np
  from matplotlib.ticker import NullFormatter
  runs = list(rows)
  values = np.concatenate([np.r_[rows[r]["radii"], rows[r]["ood_dist"]] for r in runs])
  values = values[values > 0]
  lo, hi = (np.log10(values.min()), np.log10(values.max())) if values.size else (-1.0, 1.0)
  bins = np.logspace(lo, hi + 1e-9, 30)
  fig, axes = _subplots(len(runs), (4.5 * len(runs), 3.6), sharey=True, sharex=True)
  for ax, run in zip(axes[0], runs):
    ax.hist(rows[run]["radii"], bins=bins, alpha=0.6, label="robustness radius (CW-L2)")
    ax.hist(rows[run]["ood_dist"], bins=bins, alpha=0.6, label="OOD-to-neighbour distance")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("L2 distance")
    ax.set_title(run)
  axes[0][0].set_ylabel("count")
  axes[0][0].legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  _save(fig, path, dpi=120)


def roc_curves(curves: dict[str, dict[str, tuple]], path: str, title: str) -> None:
  """curves[run][detector] = (fpr, tpr); one panel per run."""
  runs = list(curves)
  fig, axes = _subplots(len(runs), (4.5 * len(runs), 4.2))
  for ax, run in zip(axes[0], runs):
    for det, (fpr, tpr) in curves[run].items():
      ax.plot(fpr, tpr, label=det, lw=1.2)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("OOD accepted (FPR)")
    ax.set_ylabel("ID accepted (TPR)")
    ax.set_title(run)
    ax.grid(alpha=0.3)
  axes[0][-1].legend(fontsize=7, loc="lower right")
  fig.suptitle(title)
  fig.tight_layout()
  _save(fig, path, dpi=110)


def ncg_vs_severity(curves: dict[str, dict[str, dict]], path: str, title: str) -> None:
  """curves[space][run] = {severity: {"mean", "sem"}}: NCG (mean +- SEM over corruptions)
  against corruption severity, one line per run, one panel per space."""
  spaces = list(curves)
  fig, axes = _subplots(len(spaces), (5 * len(spaces), 4))
  for ax, space in zip(axes[0], spaces):
    for run, by_sev in curves[space].items():
      sev = sorted(by_sev, key=int)
      ax.errorbar([int(s) for s in sev], [by_sev[s]["mean"] for s in sev],
                  yerr=[by_sev[s]["sem"] for s in sev], marker="o", capsize=3, label=run)
    ax.set_xticks(sorted({int(s) for by_sev in curves[space].values() for s in by_sev}))
    _ncg_panel(ax, space, "corruption severity", "NCG (mean ± SEM over corruptions)")
  fig.suptitle(title)
  fig.tight_layout()
  _save(fig, path, dpi=120)
