"""OOD detectors (higher score = in-distribution), their metrics, and a notebook API.

    from ncg_jax import detect
    detect.msp(logits); detect.energy(logits, temperature=1.0)
    detect.odin(logits_fn, x, temperature=1000.0, epsilon=0.0014, input_std=1.0)
    detect.gradnorm(head_fn, head_params, features, temperature=1.0)
    stats = detect.fit_mahalanobis(features, labels, num_classes); detect.mahalanobis(stats, h)
    detect.react(head_fn, head_params, h, detect.react_threshold(val_h, 90))
    index = detect.fit_knn(train_h); detect.knn(index, h, k=50)
    detect.metrics.evaluate(scores_id, scores_ood)
    # every registered detector, searched on validation sets, as a tidy table:
    result = detect.evaluate(trained, (x_train, y_train), x_id_test, {"svhn": x_svhn},
                             id_val=x_val, ood_val=x_ood_val, detectors=["msp", "knn"])
    result.rows  # [{"detector", "ood_set", "metric", "value"}, ...]
"""
from ncg_jax.detect import metrics, nac
from ncg_jax.detect.aps import search
from ncg_jax.detect.distances import (fit_knn, fit_mahalanobis, fit_nnguide, fit_relation,
                                      fit_rmds, knn, mahalanobis, mahalanobis_preprocessed,
                                      nnguide, relation, rmds)
from ncg_jax.detect.evaluation import Evaluation, evaluate
from ncg_jax.detect.gradients import gradnorm, gradnorm_linear, odin
from ncg_jax.detect.registry import DETECTORS, FunctionNetwork, Inputs, Model
from ncg_jax.detect.scores import (ash, ash_shape, dice, dice_mask, energy, entropy, fdbd,
                                   fdbd_denominators, fit_klm, fit_she, fit_temperature,
                                   fit_vim, gen, klm, linear_head, max_logit, msp, react,
                                   react_threshold, scale, she, temp_scale, vim)

__all__ = ["DETECTORS", "Evaluation", "FunctionNetwork", "Inputs", "Model", "ash", "ash_shape",
           "dice", "dice_mask", "energy", "entropy", "evaluate", "fdbd", "fdbd_denominators",
           "fit_klm", "fit_knn", "fit_mahalanobis", "fit_nnguide", "fit_relation", "fit_rmds",
           "fit_she", "fit_temperature", "fit_vim", "gen", "gradnorm", "gradnorm_linear", "klm",
           "knn", "linear_head", "mahalanobis", "mahalanobis_preprocessed", "max_logit",
           "metrics", "msp", "nac", "nnguide", "odin", "react", "react_threshold", "relation",
           "rmds", "scale", "search", "she", "temp_scale", "vim"]
