"""OOD detectors (higher score = in-distribution) and their metrics.

    from ncg_jax import detect
    detect.msp(logits); detect.energy(logits, temperature=1.0)
    detect.odin(logits_fn, x, temperature=1000.0, epsilon=0.0014, input_std=1.0)
    detect.gradnorm(head_fn, head_params, features, temperature=1.0)
    stats = detect.fit_mahalanobis(features, labels, num_classes); detect.mahalanobis(stats, h)
    detect.react(head_fn, head_params, h, detect.react_threshold(train_h, 90))
    index = detect.fit_knn(train_h); detect.knn(index, h, k=50)
    detect.metrics.evaluate(scores_id, scores_ood)
"""
from ncg_jax.detect import metrics, nac
from ncg_jax.detect.distances import (fit_knn, fit_mahalanobis, knn, mahalanobis,
                                      mahalanobis_preprocessed)
from ncg_jax.detect.gradients import gradnorm, gradnorm_linear, odin
from ncg_jax.detect.registry import DETECTORS, Inputs, Model, search
from ncg_jax.detect.scores import (ash, energy, fit_vim, linear_head, max_logit, msp, react,
                                   react_threshold, vim)

__all__ = ["DETECTORS", "Inputs", "Model", "ash", "energy", "fit_knn", "fit_mahalanobis",
           "fit_vim", "gradnorm", "gradnorm_linear", "knn", "linear_head", "mahalanobis",
           "mahalanobis_preprocessed", "max_logit", "metrics", "msp", "nac", "odin", "react",
           "react_threshold", "search", "vim"]
