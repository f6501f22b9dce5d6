"""Accuracy and macro-F1 for classification heads, in numpy."""

import numpy as np


def _labels(y_true, y_pred):
    """Returns integer label arrays; `y_pred` scores are reduced by argmax."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_pred.ndim == y_true.ndim + 1:
        # Scores (probabilities or logits) over classes on the last axis.
        y_pred = np.argmax(y_pred, axis=-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(
            "`y_pred` must have the shape of `y_true`, or that shape plus a "
            "class axis of scores. Received: "
            f"y_true.shape={y_true.shape}, y_pred.shape={y_pred.shape}"
        )
    if y_true.size == 0:
        raise ValueError(f"`y_true` is empty. Received: y_true.shape={y_true.shape}")
    return y_true.reshape(-1), y_pred.reshape(-1)


def accuracy(y_true, y_pred) -> float:
    """Fraction of predictions equal to the true label.

    Args:
        y_true: True labels, any shape.
        y_pred: Predicted labels of the same shape, or scores with one more
            (last) axis over classes, reduced by argmax.

    Returns:
        Accuracy in [0, 1].

    Raises:
        ValueError: If the shapes do not match or `y_true` is empty.
    """
    y_true, y_pred = _labels(y_true, y_pred)
    return float(np.mean(y_true == y_pred))


def macro_f1(y_true, y_pred, num_classes: int | None = None) -> float:
    """Unweighted mean over classes of the per-class F1.

    For class `c`, `F1_c = 2 TP / (2 TP + FP + FN)`, which is the harmonic
    mean of precision and recall, and 0 when a class never appears in either
    `y_true` or `y_pred` (scikit-learn's `zero_division=0`). A class that is
    never predicted therefore counts with F1 = 0.

    Args:
        y_true: True integer labels, any shape.
        y_pred: Predicted labels of the same shape, or scores with one more
            (last) axis over classes, reduced by argmax.
        num_classes: Average over classes `0 .. num_classes - 1` (a class
            absent from both arrays then scores 0). If `None`, average over
            the labels that occur in `y_true` or `y_pred`.

    Returns:
        Macro-F1 in [0, 1].

    Raises:
        ValueError: If the shapes do not match, `y_true` is empty,
            `num_classes` is not a positive integer, or a label is outside
            `[0, num_classes)`.
    """
    y_true, y_pred = _labels(y_true, y_pred)
    if num_classes is None:
        classes = np.union1d(y_true, y_pred)
    else:
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise ValueError(
                f"`num_classes` must be a positive integer. Received: num_classes={num_classes!r}"
            )
        both = np.concatenate([y_true, y_pred])
        if not np.issubdtype(both.dtype, np.integer) or both.min() < 0 or both.max() >= num_classes:
            raise ValueError(
                f"Labels must be integers in [0, {num_classes}). Received: "
                f"labels from {both.min()} to {both.max()} with num_classes={num_classes}"
            )
        classes = np.arange(num_classes)
    scores = []
    for c in classes:
        true_positive = np.sum((y_pred == c) & (y_true == c))
        false_positive = np.sum((y_pred == c) & (y_true != c))
        false_negative = np.sum((y_pred != c) & (y_true == c))
        denominator = 2 * true_positive + false_positive + false_negative
        scores.append(2 * true_positive / denominator if denominator else 0.0)
    return float(np.mean(scores))
