"""Attacks against exact answers on linear classifiers (an independent closed form)."""
import jax
import numpy as np
import pytest

from ncg_jax.attacks import cw_l2, pgd


def linear_problem(d=100, k=5, n=400, seed=0):
  """Random linear classifier z = x W + b and interior points whose exact minimal
  adversarial perturbation stays well inside [0, 1] (so the box is inactive)."""
  rng = np.random.default_rng(seed)
  W = rng.normal(size=(d, k)).astype(np.float32)
  b = rng.normal(size=k).astype(np.float32)
  x = rng.uniform(0.3, 0.7, size=(n, d)).astype(np.float32)
  z = x @ W + b
  y = z.argmax(1)
  l2, linf, inbox = np.full(n, np.inf), np.full(n, np.inf), np.zeros(n, bool)
  for i in range(n):
    for j in range(k):
      if j == y[i]:
        continue
      dw = W[:, y[i]] - W[:, j]
      margin = z[i, y[i]] - z[i, j]
      linf[i] = min(linf[i], margin / np.abs(dw).sum())
      if margin / np.linalg.norm(dw) < l2[i]:
        l2[i] = margin / np.linalg.norm(dw)
        delta = -l2[i] * dw / np.linalg.norm(dw)
    inbox[i] = np.all((x[i] + delta > 0.02) & (x[i] + delta < 0.98)) and linf[i] < 0.25
  return (lambda xa: xa @ W + b), x, y, l2, linf, inbox


@pytest.fixture(autouse=True)
def highest_precision():
  jax.config.update("jax_default_matmul_precision", "highest")
  yield
  jax.config.update("jax_default_matmul_precision", None)


def test_cw_l2_finds_the_exact_minimal_distance_of_a_linear_classifier():
  f, x, y, l2, _, inbox = linear_problem()
  keep = inbox & (l2 > 0.1)
  x, y, l2 = x[keep][:64], y[keep][:64], l2[keep][:64]
  assert len(x) == 64
  adv, success = cw_l2(f, x, y, max_iterations=1000, batch_size=48)  # 2 batches, one padded
  assert success.all()
  assert np.all(np.asarray(f(adv)).argmax(1) != y)
  radius = np.linalg.norm(adv - x, axis=1)
  assert np.all(radius >= l2 * (1 - 1e-3))  # nothing closer than the exact minimum exists
  assert np.all(radius <= l2 * 1.05)        # and CW lands within 5% of it


def test_cw_l2_failure_returns_the_input_and_false():
  # a constant classifier can never be fooled
  f = lambda xa: np.zeros((xa.shape[0], 3), np.float32) + np.array([1.0, 0.0, 0.0], np.float32)
  x = np.full((4, 10), 0.5, np.float32)
  adv, success = cw_l2(f, x, np.zeros(4, int), binary_search_steps=3, max_iterations=50)
  assert not success.any()
  np.testing.assert_array_equal(adv, x)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_finds_adversarials_inside_eps_and_none_outside(norm):
  f, x, y, l2, linf, inbox = linear_problem(seed=1)
  exact = linf if norm == "linf" else l2
  x, y, exact = x[inbox], y[inbox], exact[inbox]
  eps = float(np.median(exact))
  steps = 40
  adv = np.asarray(pgd(f, x, y, eps=eps, norm=norm, steps=steps, step_size=2.5 * eps / steps))
  fooled = np.asarray(f(adv)).argmax(1) != y
  dist = np.abs(adv - x).max(1) if norm == "linf" else np.linalg.norm(adv - x, axis=1)
  assert np.all(dist <= eps * (1 + 1e-5)) and adv.min() >= 0 and adv.max() <= 1
  well_inside = exact < 0.8 * eps
  assert well_inside.sum() > 20 and fooled[well_inside].all()
  assert not fooled[exact > eps * (1 + 1e-5)].any()


def test_pgd_random_start_stays_in_the_ball():
  f, x, y, *_ = linear_problem(n=50)
  for norm in ("linf", "l2"):
    adv = np.asarray(pgd(f, x, y, eps=0.1, norm=norm, steps=1, step_size=0.0,
                         key=jax.random.key(0)))
    dist = np.abs(adv - x).max(1) if norm == "linf" else np.linalg.norm(adv - x, axis=1)
    assert np.all(dist <= 0.1 + 1e-6) and np.all(dist > 0)
