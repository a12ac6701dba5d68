"""Regenerate the sample images in this folder (drawn with Pillow and numpy; no third-party images).

    python samples/make_samples.py

- ``scene.png``: a 192x128 drawing (sky gradient, hills, a house, text), the clean reference;
- ``noisy.png``: the scene with Gaussian noise of sigma 25 (seed 0), for ``task=denoise``;
- ``blocky.jpg``: the scene saved as JPEG quality 15, for ``task=deblock`` and ``task=deblock,sr``;
- ``small.png``: the scene at 96x64, for ``task=sr``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
W, H = 192, 128


def scene() -> Image.Image:
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    sky = np.stack([110 + 60 * yy / H, 160 + 50 * yy / H, 235 - 20 * yy / H + 0 * xx], axis=-1)
    im = Image.fromarray(sky.astype(np.uint8))
    d = ImageDraw.Draw(im)
    d.ellipse((140, 12, 172, 44), fill=(255, 214, 90))
    d.polygon([(0, 90), (50, 60), (110, 92), (150, 70), (192, 88), (192, 128), (0, 128)], fill=(70, 140, 70))
    d.rectangle((40, 74, 86, 112), fill=(200, 80, 60), outline=(60, 30, 20))
    d.polygon([(36, 76), (63, 52), (90, 76)], fill=(110, 50, 40))
    d.rectangle((56, 92, 68, 112), fill=(90, 60, 30))
    for i in range(6):  # a fence: thin lines that blur and ring easily
        d.line((100 + 8 * i, 96, 100 + 8 * i, 118), fill=(240, 240, 230), width=2)
    d.line((96, 102, 146, 102), fill=(240, 240, 230), width=2)
    d.text((8, 6), "BBCU sample", fill=(20, 30, 60))
    return im


def main() -> None:
    im = scene()
    im.save(HERE / "scene.png", optimize=True)
    rng = np.random.default_rng(0)
    noisy = np.asarray(im, np.float32) + rng.normal(0, 25, (H, W, 3))
    Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8)).save(HERE / "noisy.png", optimize=True)
    im.save(HERE / "blocky.jpg", quality=15)
    im.resize((W // 2, H // 2), Image.Resampling.BICUBIC).save(HERE / "small.png", optimize=True)


if __name__ == "__main__":
    main()
