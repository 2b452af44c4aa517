from __future__ import annotations

import numpy as np
import pytest

from classifiers.metrics import classification_metrics, evaluate, generalization_report, training_accuracy


class _Fixed:
    """A stand-in model that predicts given labels."""

    classes_ = np.array(["cat", "dog", "fox"])

    def __init__(self, predictions: list[str]) -> None:
        self.predictions = np.array(predictions)

    def predict(self, X):
        return self.predictions[: len(X)]


def test_known_tiny_case():
    y_true = ["cat", "cat", "dog", "dog", "dog", "fox"]
    y_pred = ["cat", "dog", "dog", "dog", "cat", "fox"]
    m = evaluate(_Fixed(y_pred), np.zeros((6, 2)), y_true, ["cat", "dog", "fox"])
    assert m["labels"] == ["cat", "dog", "fox"]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 1, 0], [1, 2, 0], [0, 0, 1]]  # rows = true
    assert m["per_class"]["cat"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    dog = m["per_class"]["dog"]
    assert dog["precision"] == pytest.approx(2 / 3) and dog["recall"] == pytest.approx(2 / 3)
    assert dog["support"] == 3
    assert m["per_class"]["fox"]["f1"] == 1.0
    assert m["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)


def test_label_order_is_the_callers_and_absent_classes_have_zero_support():
    m = classification_metrics(["b", "a"], ["b", "a"], ["c", "b", "a"])
    assert m["labels"] == ["c", "b", "a"]
    assert m["confusion_matrix"] == [[0, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert m["per_class"]["c"]["support"] == 0
    assert m["macro_f1"] == 1.0  # a class that is in neither y nor the predictions is not a zero


def test_labels_must_cover_truth_and_predictions():
    with pytest.raises(ValueError, match="not in labels"):
        classification_metrics(["a", "b"], ["a", "z"], ["a", "b"])


def test_default_labels_are_the_models_classes_and_the_result_is_json_ready():
    import json

    m = evaluate(_Fixed(["cat", "fox"]), np.zeros((2, 1)), ["cat", "dog"])
    assert m["labels"] == ["cat", "dog", "fox"]
    json.dumps(m)


def test_training_and_generalisation_error_side_by_side():
    model = _Fixed(["cat", "dog", "fox", "cat"])
    assert training_accuracy(model, np.zeros((4, 1)), ["cat", "dog", "fox", "dog"]) == 0.75
    report = generalization_report(
        model, np.zeros((4, 1)), ["cat", "dog", "fox", "cat"], np.zeros((2, 1)), ["dog", "cat"]
    )
    assert report["train_accuracy"] == 1.0 and report["test_accuracy"] == 0.0
    assert report["train_error"] == 0.0 and report["test_error"] == 1.0
    assert report["generalization_gap"] == 1.0
