"""Makes the README's screenshots of the page: ``.venv/bin/python docs/screenshots.py``.

Starts ``bbcu serve`` (embedded mode, the shipped weights) on a free port, opens ``/`` in Debian's
headless Chromium (``make browser`` installs it), denoises a picture drawn here (noise sigma 25, as
the denoising benchmark), and writes docs/images/page-before.png and page-after.png.
"""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere
from benchmarks.harness import ROOT, bbcu, free_port, healthy, spawn, wait_until  # noqa: E402

OUT = ROOT / "docs" / "images"


def picture(path: Path) -> Path:
    """A 240x180 drawing (gradient sky, sun, hills, a striped house) with Gaussian noise sigma 25."""
    w, h = 240, 180
    y = np.linspace(0, 1, h)[:, None, None]
    sky = (np.array([70, 130, 210]) * (1 - y) + np.array([230, 200, 160]) * y) * np.ones((1, w, 1))
    img = Image.fromarray(sky.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    draw.ellipse((170, 20, 215, 65), fill=(255, 215, 90))
    hills = [(0, 130), (60, 95), (130, 125), (190, 100), (240, 120), (240, 180), (0, 180)]
    draw.polygon(hills, fill=(60, 120, 60))
    draw.rectangle((40, 105, 100, 160), fill=(200, 60, 50))
    for x in range(44, 100, 8):
        draw.line((x, 110, x, 156), fill=(240, 230, 220), width=2)
    draw.polygon([(34, 108), (70, 80), (106, 108)], fill=(90, 50, 40))
    draw.text((130, 140), "BBCU 1-bit", fill=(255, 255, 255))
    clean = np.asarray(img).astype(np.float32)
    noisy = clean + np.random.default_rng(25).normal(0, 25, clean.shape)
    Image.fromarray(np.clip(noisy.round(), 0, 255).astype(np.uint8)).save(path)
    return path


def shoot(driver, path: Path) -> None:  # type: ignore[no-untyped-def]
    png = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    png.quantize(colors=192).save(path, optimize=True)  # a few tens of KB each
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size // 1024} KiB)")


def main() -> int:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    logdir = Path(tempfile.mkdtemp(prefix="bbcu-screenshots-"))
    server = spawn("serve", bbcu("serve", "--port", str(port), "--log-level", "warning"), {}, logdir)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,820",
                "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path="/usr/bin/chromedriver"))
    try:
        wait_until(healthy(url, "/readyz"), 60, server, "the service to be ready")
        OUT.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            noisy = picture(Path(tmp) / "noisy-house.png")
            driver.get(url + "/")
            wait = WebDriverWait(driver, 300)
            wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#task option")))
            Select(driver.find_element(By.ID, "task")).select_by_value("denoise")
            driver.find_element(By.ID, "files").send_keys(str(noisy))
            shoot(driver, OUT / "page-before.png")
            driver.find_element(By.ID, "start").click()
            wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".job .download")))
            driver.execute_script("document.querySelector('.job .download').scrollIntoView(false)")
            shoot(driver, OUT / "page-after.png")
    finally:
        driver.quit()
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
