"""The exported graph's head: every kind of linear head, written as ONNX ops after a backbone's ``features``,
gives ``LinearHead.predict_proba``'s probabilities on real features (scikit-learn's digits)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from sklearn.datasets import load_digits

from classifiers.export import export_pipeline
from classifiers.heads import HeadConfig, build_pipeline
from classifiers.linear_head import LinearHead
from workers.runtime import export


def _features_graph(dim: int) -> onnx.ModelProto:
    """A stand-in backbone: input ``x`` → output ``features`` (Identity), with a second output to drop."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["features"]), helper.make_node("Neg", ["x"], ["logits"])],
        "backbone",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dim])],
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", dim]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", dim]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(
    ("head_type", "pca", "binary"),
    [
        ("logistic", False, False),
        ("logistic", True, False),
        ("ridge", False, False),
        ("ridge", False, True),
        ("linear_svm", False, False),
        ("linear_svm", False, True),
        ("sgd", True, False),
        ("logistic", False, True),
    ],
)
def test_the_head_as_onnx_ops_gives_the_heads_probabilities(head_type: str, pca: bool, binary: bool) -> None:
    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    if binary:
        X, y = X[y < 2], y[y < 2]
    cfg = HeadConfig(type=head_type, C=1.0, pca_whiten=pca, pca_components=16 if pca else None)
    pipeline = build_pipeline(cfg, n_samples=len(X)).fit(X[:300], y[:300])
    head = LinearHead(*export_pipeline(pipeline))
    model = _features_graph(X.shape[1])
    export._append_linear_head(model, head)
    export._keep_only_output(model, n_classes=len(head.classes_))
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run([export.OUTPUT], {"x": X[300:]})[0]
    want = head.predict_proba(X[300:])
    assert got.shape == want.shape == (len(X) - 300, len(head.classes_))
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert (got.argmax(1) == want.argmax(1)).mean() > 0.99
