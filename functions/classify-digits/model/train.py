"""Train and export the `digits` classifier served by `classify-digits`.

The model is a small multilayer perceptron trained on scikit-learn's bundled
`load_digits()` dataset (8x8 grey-scale images of hand-written digits, 1,797
samples, pixel values 0-16). The dataset ships inside the scikit-learn
package, so nothing is downloaded.

The trained network is written to ONNX by hand with `onnx.helper`, using only
basic operators (Mul, MatMul, Add, Relu, Softmax) so that it loads in both
onnxruntime and tract-onnx:

    pixels  float32 [N, 64]   raw pixel values 0-16 (scaling is in the graph)
    -> Mul(1/16) -> MatMul(W1) -> Add(b1) -> Relu
    -> MatMul(W2) -> Add(b2) -> Softmax(axis=1)
    -> probabilities  float32 [N, 10]

Outputs, written next to this script:

    digits.onnx    the exported model
    heldout.json   the held-out split with onnxruntime's predictions, used as
                   test vectors for the serving function

Run from the repository root:

    pip install -r functions/classify-digits/model/requirements.txt && python3 functions/classify-digits/model/train.py

With the pinned library versions, repeated runs produce byte-identical files.
"""

import os

# Single-threaded numeric libraries: keeps training bit-for-bit reproducible
# and the CPU footprint small. Must be set before numpy is imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import json  # noqa: E402
import pathlib  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
MODEL_PATH = HERE / "digits.onnx"
HELDOUT_PATH = HERE / "heldout.json"

SOURCE = (
    "scikit-learn load_digits, "
    "train_test_split(test_size=0.2, random_state=0, stratify=y)"
)
OPSET = 13
IR_VERSION = 8


def train():
    digits = load_digits()
    X, y = digits.data, digits.target  # X: float64 [1797, 64], values 0-16
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.2, random_state=0, stratify=y
    )
    clf = MLPClassifier(
        hidden_layer_sizes=(32,), activation="relu", max_iter=500, random_state=0
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(X_train / 16.0, y_train)
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            print(f"warning: {w.message}")
    return clf, X_test, y_test


def export(clf):
    (w1, w2), (b1, b2) = clf.coefs_, clf.intercepts_
    n_in, n_hidden = w1.shape
    n_out = w2.shape[1]
    assert (n_in, n_out) == (64, 10), (n_in, n_out)
    assert list(clf.classes_) == list(range(10)), clf.classes_

    initializers = [
        numpy_helper.from_array(np.array(1.0 / 16.0, dtype=np.float32), "scale"),
        numpy_helper.from_array(w1.astype(np.float32), "W1"),
        numpy_helper.from_array(b1.astype(np.float32), "b1"),
        numpy_helper.from_array(w2.astype(np.float32), "W2"),
        numpy_helper.from_array(b2.astype(np.float32), "b2"),
    ]
    # Each node is named after its output tensor, so runtimes that report node
    # names (tract) and those that report tensor names (onnxruntime) agree.
    def node(op, inputs, output, **attrs):
        return helper.make_node(op, inputs, [output], name=output, **attrs)

    nodes = [
        node("Mul", ["pixels", "scale"], "scaled"),
        node("MatMul", ["scaled", "W1"], "hidden_matmul"),
        node("Add", ["hidden_matmul", "b1"], "hidden_preact"),
        node("Relu", ["hidden_preact"], "hidden"),
        node("MatMul", ["hidden", "W2"], "logits_matmul"),
        node("Add", ["logits_matmul", "b2"], "logits"),
        node("Softmax", ["logits"], "probabilities", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "digits",
        inputs=[helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", n_in])],
        outputs=[
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", n_out])
        ],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="glia classify-digits train.py",
        doc_string=(
            "MLP (64-32-10, ReLU, softmax) trained on scikit-learn load_digits. "
            "Input: raw pixel values 0-16."
        ),
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, MODEL_PATH)


def evaluate(clf, X_test, y_test):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(MODEL_PATH), sess_options=opts, providers=["CPUExecutionProvider"]
    )
    (probs,) = session.run(["probabilities"], {"pixels": X_test.astype(np.float32)})
    expected = probs.argmax(axis=1)

    sklearn_pred = clf.predict(X_test / 16.0)
    mismatches = int((sklearn_pred != expected).sum())
    print(f"sklearn vs onnxruntime prediction mismatches: {mismatches}")
    assert mismatches == 0, f"{mismatches} predictions differ between sklearn and onnxruntime"

    accuracy = float((expected == y_test).mean())
    samples = [
        {
            "pixels": [int(v) for v in px],
            "label": int(label),
            "expected": int(exp),
            "probabilities": [round(float(p), 6) for p in prob],
        }
        for px, label, exp, prob in zip(X_test, y_test, expected, probs)
    ]
    # One sample per line keeps the file readable and diffs small.
    compact = {"separators": (",", ":")}
    lines = ["{", f'  "source": {json.dumps(SOURCE)},', '  "samples": [']
    lines += [
        f"    {json.dumps(s, **compact)}" + ("," if i < len(samples) - 1 else "")
        for i, s in enumerate(samples)
    ]
    lines += ["  ],", f'  "accuracy": {json.dumps(accuracy)}', "}"]
    text = "\n".join(lines) + "\n"
    json.loads(text)  # sanity check
    HELDOUT_PATH.write_text(text)
    return accuracy, len(samples)


def main():
    clf, X_test, y_test = train()
    print(f"training iterations: {clf.n_iter_}")
    export(clf)
    accuracy, n = evaluate(clf, X_test, y_test)
    print(f"held-out samples: {n}")
    print(f"held-out accuracy (onnxruntime): {accuracy:.4f}")
    for path in (MODEL_PATH, HELDOUT_PATH):
        print(f"{path.name}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
