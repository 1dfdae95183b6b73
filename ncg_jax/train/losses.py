"""Training losses as pure functions, chosen by name through `LOSSES`.

A loss is `loss_fn(forward, params, model_state, x, y, key) -> (loss, (model_state, logits))`
where `forward(params, model_state, x, train, key) -> (logits, model_state)` runs the model
in train mode (dropout on, BatchNorm on batch statistics and updated) or eval mode.
`make_loss(name, attack)` builds one; `attack` (an `AttackConfig`) sets the inner
maximisation of the robust losses, which always runs on the eval-mode model (BatchNorm on
running statistics, never updated), as TRADES and the NCG paper's code do.

  ce           cross-entropy.
  trades<beta> TRADES (Zhang et al., ICML 2019): CE(f(x), y) + beta * KL(p(x) || p(x_adv)),
               x_adv maximising that KL from x + 0.001 N(0, 1) (a zero gradient replaced by
               a random direction); gradients flow through both branches (the clean
               distribution is not detached). As TRADES's `trades.py` (and the NCG paper's
               copy), the model runs three times in train mode: f(x) for the CE, then
               f(x_adv) and f(x) again for the KL, each pass updating the BatchNorm
               statistics and drawing its own dropout mask.
  advce        PGD adversarial training (Madry et al., ICLR 2018): CE on PGD examples only,
               true labels, random start.
  mixupce      mixup (Zhang et al., ICLR 2018) as the NCG paper's code (`losses/__init__.py`):
               one train-mode pass on the batch (its logits are the reported accuracy), then
               the first half of the batch mixed with the second half with one
               lambda ~ Beta(1, 1), and KL(soft labels || softmax(f(mixed))) averaged over
               the half batch (an odd last example is dropped).
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from ncg_jax.attacks.pgd import NORMS, ascend, random_start
from ncg_jax.registry import ConfigError, Registry

LOSSES = Registry("loss")
NATURAL = "ce"  # the natural (non-robust) loss robust runs are compared with


@dataclasses.dataclass(frozen=True)
class AttackConfig:
  """The inner maximisation of robust losses. Defaults follow the NCG paper: L2, eps 2,
  10 steps of size 2 * eps / steps (0.4 at eps 2)."""
  norm: str = "l2"
  eps: float = 2.0
  steps: int = 10
  step_size: float | None = None
  clip: tuple[float, float] | None = (0.0, 1.0)  # None for unbounded inputs (features)

  def __post_init__(self):
    if self.norm not in NORMS:
      raise ConfigError(f"unknown norm '{self.norm}'; valid: {', '.join(NORMS)}")
    if self.eps <= 0 or self.steps < 1:
      raise ConfigError("--eps must be positive and --attack_steps at least 1")

  @property
  def alpha(self) -> float:
    return self.step_size if self.step_size is not None else 2.0 * self.eps / self.steps


def cross_entropy(logits_BxK: jnp.ndarray, y_B: jnp.ndarray) -> jnp.ndarray:
  """Per-example softmax cross-entropy with integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(logits_BxK, y_B)


def kl_softmax(p_logits: jnp.ndarray, q_logits: jnp.ndarray) -> jnp.ndarray:
  """Per-example KL(softmax(p_logits) || softmax(q_logits))."""
  log_p = jax.nn.log_softmax(p_logits)
  return jnp.sum(jnp.exp(log_p) * (log_p - jax.nn.log_softmax(q_logits)), axis=-1)


def _eval_logits(forward, params, model_state):
  return lambda xa: forward(params, model_state, xa, train=False)[0]


@LOSSES.register("ce")
def make_ce(attack: AttackConfig | None = None):
  def loss_fn(forward, params, model_state, x, y, key):
    logits, model_state = forward(params, model_state, x, train=True, key=key)
    return cross_entropy(logits, y).mean(), (model_state, logits)
  return loss_fn


@LOSSES.register("trades<beta>")
def make_trades(beta: str, attack: AttackConfig | None = None):
  beta, a = float(beta), attack or AttackConfig()

  def loss_fn(forward, params, model_state, x, y, key):
    k_init, k_nat, k_adv, k_kl = jax.random.split(key, 4)
    f_eval = _eval_logits(forward, jax.lax.stop_gradient(params), model_state)
    # the clean prediction through the differentiated forward (its gradient stopped after
    # it), the form the train-mode passes below take: XLA computes the layers before the
    # first dropout once for p_clean and f(x). On the CPU that form's first convolution is
    # `layers._conv_by_taps`; through the plain forward p_clean would come from XLA's fused
    # forward instead, whose last bits differ and move the 300-step trainings' figures
    p_clean = jax.lax.stop_gradient(_eval_logits(forward, params, model_state)(x))
    x_start = x + 0.001 * jax.random.normal(k_init, x.shape, x.dtype)
    x_adv = jax.lax.stop_gradient(ascend(lambda xa, p: kl_softmax(p, f_eval(xa)), x, x_start,
                                         eps=a.eps, norm=a.norm, steps=a.steps,
                                         step_size=a.alpha, clip=a.clip, key=k_init,
                                         rows=(p_clean,)))
    logits, model_state = forward(params, model_state, x, train=True, key=k_nat)
    logits_adv, model_state = forward(params, model_state, x_adv, train=True, key=k_adv)
    logits_kl, model_state = forward(params, model_state, x, train=True, key=k_kl)
    loss = cross_entropy(logits, y).mean() + beta * kl_softmax(logits_kl, logits_adv).mean()
    return loss, (model_state, logits)
  return loss_fn


@LOSSES.register("advce")
def make_advce(attack: AttackConfig | None = None):
  a = attack or AttackConfig()

  def loss_fn(forward, params, model_state, x, y, key):
    k_start, k_drop = jax.random.split(key)
    f_eval = _eval_logits(forward, jax.lax.stop_gradient(params), model_state)
    x_adv = jax.lax.stop_gradient(ascend(
        lambda xa, yy: cross_entropy(f_eval(xa), yy), x,
        random_start(k_start, x, a.eps, a.norm, a.clip),
        eps=a.eps, norm=a.norm, steps=a.steps, step_size=a.alpha, clip=a.clip, rows=(y,)))
    logits, model_state = forward(params, model_state, x_adv, train=True, key=k_drop)
    return cross_entropy(logits, y).mean(), (model_state, logits)
  return loss_fn


@LOSSES.register("mixupce")
def make_mixupce(attack: AttackConfig | None = None):
  del attack

  def loss_fn(forward, params, model_state, x, y, key):
    k_lam, k_full, k_mix = jax.random.split(key, 3)
    logits, model_state = forward(params, model_state, x, train=True, key=k_full)
    half = x.shape[0] // 2
    lam = jax.random.beta(k_lam, 1.0, 1.0)
    k = logits.shape[-1]
    y1, y2 = jax.nn.one_hot(y[:half], k), jax.nn.one_hot(y[half:2 * half], k)
    x_mix = lam * x[:half] + (1.0 - lam) * x[half:2 * half]
    soft = lam * y1 + (1.0 - lam) * y2
    logits_mix, model_state = forward(params, model_state, x_mix, train=True, key=k_mix)
    kl = jnp.sum(jnp.where(soft > 0, soft * (jnp.log(jnp.where(soft > 0, soft, 1.0))
                                             - jax.nn.log_softmax(logits_mix)), 0.0), axis=-1)
    return kl.mean(), (model_state, logits)
  return loss_fn


make_trades.robust = make_advce.robust = True  # trained against an attack: runs carry norm/eps


def is_robust(name: str) -> bool:
  return getattr(LOSSES.lookup(name)[0], "robust", False)


def make_loss(name: str, attack: AttackConfig | None = None):
  """The loss `name` (with its inner attack): one function object per (name, attack), so that
  the train steps built on it (`trainer.make_train_step`) are compiled once per process."""
  return _loss(name, attack)


@functools.lru_cache(maxsize=None)
def _loss(name, attack):
  return LOSSES.get(name, attack=attack)


def run_name(name: str, attack: AttackConfig | None = None) -> str:
  """The directory name of a run: the loss name, plus norm and eps for robust losses, so
  `trades6` at eps 2 and at eps 4 live side by side."""
  if not is_robust(name):
    return name
  a = attack or AttackConfig()
  return f"{name}-{a.norm}-eps{a.eps:g}"
