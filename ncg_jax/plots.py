"""Figures written by the experiments (matplotlib, Agg backend, PNG)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def ncg_vs_distance(curves: dict[str, dict[str, dict]], path: str, title: str) -> None:
  """curves[space][run] = ncg.ncg_vs_distance(...) output; one panel per space."""
  spaces = list(curves)
  fig, axes = plt.subplots(1, len(spaces), figsize=(5 * len(spaces), 4), squeeze=False)
  for ax, space in zip(axes[0], spaces):
    for run, c in curves[space].items():
      ax.errorbar(c["dist_mean"], c["mean"], yerr=c["sem"], marker="o", capsize=3, label=run)
    ax.set_xlabel(f"distance to nearest training {'image' if space == 'pixel' else 'feature'} (L2)")
    ax.set_ylabel("NCG (mean ± SEM, 5 equal-count bins)")
    ax.set_title(f"{space} space")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
