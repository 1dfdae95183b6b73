"""Adversarial attacks as pure functions of `logits_fn(x) -> logits` (eval-mode model).

`pgd` (projected gradient ascent, L2 or Linf), `apgd` (APGD-CE / APGD-DLR, Croce & Hein 2020),
`robust_accuracy` (PGD with restarts plus both APGD attacks) and `cw_l2` (Carlini-Wagner L2,
the closest adversarial example). `logits_fn` may be any function; pass a `jax.tree_util.Partial`
(as `Trained.logits_fn()` does) so the parameters are traced, not baked into the program,
and the same object across calls reuses the compiled attack.
"""
from ncg_jax.attacks.apgd import apgd, dlr_loss, robust_accuracy, robust_accuracy_over
from ncg_jax.attacks.cw import cw_l2
from ncg_jax.attacks.pgd import ascend, pgd, project

__all__ = ["apgd", "ascend", "cw_l2", "dlr_loss", "pgd", "project", "robust_accuracy",
           "robust_accuracy_over"]
