"""Test-split classification quality: balanced accuracy, macro one-vs-rest AUC, recalls, confusion."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import softmax
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, recall_score, roc_auc_score


def mean_ovr_auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean over classes of one-vs-rest ROC AUC (the study's "mean AUC"); classes absent from
    ``labels`` are skipped, since their AUC is undefined. ``probabilities`` is ``[N, K]``."""
    aucs = [roc_auc_score(labels == k, probabilities[:, k]) for k in range(probabilities.shape[1])
            if 0 < (labels == k).sum() < len(labels)]
    return float(np.mean(aucs)) if aucs else float("nan")


def classification_scores(logits: np.ndarray, labels: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Long table ``metric, class_true, class_pred, value`` from ``logits [N, K]`` and ``labels [N]``.

    Rows: ``balanced_accuracy``, ``accuracy``, ``mean_auc`` (class columns null); ``recall`` per true
    class (NaN for a class without test images); ``confusion`` per (true, predicted) pair with the
    image count as value. Balanced accuracy is the mean recall over the classes present.
    """
    predictions = logits.argmax(1)
    probabilities = softmax(logits.astype(np.float64), axis=1)
    k = len(classes)
    rows = [
        ("balanced_accuracy", None, None, balanced_accuracy_score(labels, predictions)),
        ("accuracy", None, None, float((labels == predictions).mean())),
        ("mean_auc", None, None, mean_ovr_auc(labels, probabilities)),
    ]
    # a class without test images has no recall: NaN, not sklearn's default of 0
    recalls = recall_score(labels, predictions, labels=list(range(k)), average=None, zero_division=np.nan)
    rows += [("recall", classes[c], None, float(recalls[c])) for c in range(k)]
    matrix = confusion_matrix(labels, predictions, labels=list(range(k)))
    rows += [("confusion", classes[t], classes[p], float(matrix[t, p])) for t in range(k) for p in range(k)]
    frame = pd.DataFrame(rows, columns=["metric", "class_true", "class_pred", "value"])
    frame["class_true"] = frame["class_true"].astype("string")
    frame["class_pred"] = frame["class_pred"].astype("string")
    return frame
