"""Writes the image test data of glia-sdk (`src/image/tests.rs`): a small
source image, what OpenCV's `cv2.resize` makes of it with each filter, and a
JPEG with Pillow's decoding of it.

    pip install -r sdk/testdata/requirements.txt
    python3 sdk/testdata/make.py
"""

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
SIZES = [(16, 11), (50, 31), (37, 8)]
FILTERS = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "lanczos4": cv2.INTER_LANCZOS4,
}


def save_png(name, rgb):
    Image.fromarray(rgb, "RGB").save(HERE / name, optimize=True)


def main():
    rng = np.random.default_rng(7)
    h, w = 23, 37
    y, x = np.mgrid[0:h, 0:w]
    # Edges, gradients and noise: every filter's kernel shows.
    base = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), ((x // 4 + y // 4) % 2) * 255], axis=-1)
    noise = rng.integers(-40, 41, size=(h, w, 3))
    source = np.clip(base + noise, 0, 255).astype(np.uint8)
    save_png("source.png", source)
    for name, flag in FILTERS.items():
        for width, height in SIZES:
            out = cv2.resize(source, (width, height), interpolation=flag)
            save_png(f"{name}-{width}x{height}.png", out)

    # A smooth picture, encoded as a 4:2:0 JPEG, and Pillow's decoding of it.
    h, w = 48, 64
    y, x = np.mgrid[0:h, 0:w]
    photo = np.stack(
        [128 + 100 * np.sin(x / 9.0), 128 + 100 * np.cos(y / 7.0), (x + y) * 2], axis=-1
    )
    Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8), "RGB").save(
        HERE / "photo.jpg", quality=90, subsampling=2
    )
    decoded = np.asarray(Image.open(HERE / "photo.jpg").convert("RGB"))
    save_png("photo-decoded.png", decoded)


if __name__ == "__main__":
    main()
