import numpy as np
import pytest

from kerasft.evaluate import accuracy, macro_f1

# Class 2 occurs in y_true but is never predicted.
Y_TRUE = [0, 0, 1, 1, 2, 2]
Y_PRED = [0, 1, 1, 1, 0, 0]


def test_accuracy_hand_computed():
    # Correct at positions 0, 2, 3: 3 / 6.
    assert accuracy(Y_TRUE, Y_PRED) == 0.5
    assert accuracy(np.array([[1, 2], [3, 4]]), np.array([[1, 0], [3, 4]])) == 0.75


def test_macro_f1_hand_computed_with_a_class_never_predicted():
    # F1_c = 2TP / (2TP + FP + FN)
    # class 0: TP 1 (pos 0), FP 2 (pos 4, 5), FN 1 (pos 1) -> 2/5 = 0.4
    # class 1: TP 2 (pos 2, 3), FP 1 (pos 1), FN 0        -> 4/5 = 0.8
    # class 2: TP 0, FP 0, FN 2 (never predicted)          -> 0
    # macro = (0.4 + 0.8 + 0) / 3 = 0.4
    assert macro_f1(Y_TRUE, Y_PRED) == pytest.approx(0.4, rel=1e-12)
    # With num_classes=4, class 3 (absent everywhere) scores 0:
    # (0.4 + 0.8 + 0 + 0) / 4 = 0.3
    assert macro_f1(Y_TRUE, Y_PRED, num_classes=4) == pytest.approx(0.3, rel=1e-12)


def test_scores_are_reduced_by_argmax():
    scores = np.eye(3)[Y_PRED] * 0.8 + 0.05
    assert accuracy(Y_TRUE, scores) == 0.5
    assert macro_f1(Y_TRUE, scores) == pytest.approx(0.4, rel=1e-12)


def test_perfect_predictions():
    assert accuracy([3, 1], [3, 1]) == 1.0
    assert macro_f1([3, 1], [3, 1]) == 1.0


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"y_true.shape=\(3,\), y_pred.shape=\(2,\)"):
        accuracy([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match="num_classes=0"):
        macro_f1([0], [0], num_classes=0)
    with pytest.raises(ValueError, match="labels from 0 to 5 with num_classes=3"):
        macro_f1([0, 5], [0, 1], num_classes=3)
    with pytest.raises(ValueError, match="empty"):
        accuracy([], [])
