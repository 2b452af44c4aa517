"""LP-FT (Kumar et al., ICLR 2022): a fine-tune's new head starts as the linear probe of scenario 3, fitted on
the training split's pooled features, so that epoch 0 already *is* that probe and fine-tuning only has to
improve on it.

The probe is the service's own scikit-learn head (``StandardScaler`` → multinomial ``LogisticRegression``, C
chosen by cross-validation on the training split alone: the validation split stays clean for picking the best
epoch). Its standardisation is folded into the torch ``Linear`` exactly:

    z = ((x - mean) / scale) @ coef.T + intercept = x @ (coef / scale).T + (intercept - coef @ (mean / scale))

A binary logistic regression has one row ``z``; the torch head gets the two rows ``[-z/2, z/2]``, whose
softmax is ``[1 - sigmoid(z), sigmoid(z)]``, scikit-learn's ``predict_proba``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn

from classifiers.heads import HeadConfig
from classifiers.search import fit_head

MISSING_CLASS_BIAS = -20.0  # a class absent from the training split: the probe never predicts it


@dataclass(frozen=True)
class ProbeHead:
    """The probe folded into one affine map: ``weight`` K×D, ``bias`` K (float64), classes in the trainer's
    order; ``C`` and ``cv_score`` say how the probe was chosen."""

    weight: np.ndarray
    bias: np.ndarray
    C: float
    cv_score: float | None
    pipeline: Any  # the fitted scikit-learn pipeline (its predict_proba is what the head reproduces)


def fit_probe(features: np.ndarray, labels: np.ndarray, classes: list[str], *, seed: int = 0) -> ProbeHead:
    """Fit the probe on training features (N×D) and label indices into ``classes``; fold it into a head."""
    names = np.asarray(classes)[np.asarray(labels, dtype=np.int64)]
    cfg = HeadConfig(type="logistic", standardize=True, seed=seed, n_jobs=1)
    result = fit_head(np.asarray(features, dtype=np.float32), names, cfg)
    weight, bias = fold(result.pipeline, classes)
    return ProbeHead(weight, bias, float(result.params["C"]), result.best_score, result.pipeline)


def fold(pipeline: Any, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(weight K×D, bias K) of ``Pipeline([scale, clf])`` as one affine map on raw features, rows in
    ``classes`` order (a class the probe never saw gets a zero row and a very negative bias)."""
    steps = [step for _, step in pipeline.steps if step not in (None, "passthrough")]
    clf = steps[-1]
    if not isinstance(clf, LogisticRegression) or any(not isinstance(s, StandardScaler) for s in steps[:-1]):
        raise ValueError("the probe must be [StandardScaler] -> LogisticRegression")
    coef = np.atleast_2d(np.asarray(clf.coef_, dtype=np.float64))
    intercept = np.broadcast_to(np.asarray(clf.intercept_, dtype=np.float64), (coef.shape[0],)).copy()
    if coef.shape[0] == 1:  # binary: softmax([-z/2, z/2]) = [1 - sigmoid(z), sigmoid(z)]
        coef, intercept = np.concatenate([-coef, coef]) / 2, np.concatenate([-intercept, intercept]) / 2
    for scaler in steps[:-1]:  # fold x -> (x - mean) / scale into the affine map
        mean = np.asarray(scaler.mean_ if scaler.with_mean else 0.0, dtype=np.float64)
        scale = np.asarray(scaler.scale_ if scaler.with_std else 1.0, dtype=np.float64)
        coef = coef / scale
        intercept = intercept - coef @ np.broadcast_to(mean, (coef.shape[1],))
    index = {str(c): i for i, c in enumerate(clf.classes_)}
    weight = np.zeros((len(classes), coef.shape[1]))
    bias = np.full(len(classes), MISSING_CLASS_BIAS)
    for row, name in enumerate(classes):
        if name in index:
            weight[row], bias[row] = coef[index[name]], intercept[index[name]]
    return weight, bias


@torch.no_grad()
def load_head(layer: nn.Module, probe: ProbeHead) -> None:
    """Copy the folded probe into the model's ``nn.Linear`` head."""
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"a probe initialises a Linear head, not a {type(layer).__name__}")
    if tuple(layer.weight.shape) != probe.weight.shape:
        raise ValueError(f"head is {tuple(layer.weight.shape)}, the probe {probe.weight.shape}")
    layer.weight.copy_(torch.from_numpy(probe.weight).to(layer.weight))
    layer.bias.copy_(torch.from_numpy(probe.bias).to(layer.bias))


@torch.no_grad()
def pooled_features(model: Any, batches: Any) -> np.ndarray:
    """The model's pooled pre-logit features (eval mode) for an iterable of normalised input batches: what
    the probe is fitted on when no feature cache matches the model's weights."""
    was_training = model.training
    model.eval()
    try:
        out = [model.forward_head(model.forward_features(x), pre_logits=True).float().cpu() for x in batches]
    finally:
        model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, model.num_features), np.float32)
