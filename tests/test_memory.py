"""Peak memory stays bounded by the tile size: a 12 MP photo through the CLI under 2 GB RSS.

The peak is the child's own ``VmHWM``: ``ru_maxrss`` would not do, because Linux carries the
parent's peak RSS into a child across fork and exec (a pytest process that ran big models would
make a small child look big).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

pytestmark = pytest.mark.service  # runs `bbcu` (or a child) in its own process: not in test-quick

ROOT = Path(__file__).resolve().parents[1]
HWM = "[l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]"
PEAK_SCRIPT = (f"import sys; from cli.main import main; code = main(sys.argv[1:]); print('VMHWM_KB', {HWM}); "
               "sys.exit(code)")


def restore_peak_kb(*args: str) -> tuple[int, str]:
    """`bbcu restore ARGS` in a fresh interpreter: its peak RSS (kB) and its stderr."""
    r = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, "restore", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.split("VMHWM_KB")[1].split()[0]), r.stderr


def noisy_photo(path: Path, width: int = 4000, height: int = 3000) -> Path:
    """Gradients, bars and sigma-20 noise: auto strength runs the network on all of it."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 200 // width, yy * 200 // height, 40 + (xx // 50 + yy // 50) % 2 * 150], axis=-1)
    noise = np.random.default_rng(0).normal(0, 20, base.shape)
    PILImage.fromarray(np.clip(base + 28 + noise, 0, 255).astype(np.uint8)).save(path, compress_level=1)
    return path


def test_rss_of_a_child_is_its_own_peak() -> None:
    # this process already holds more than the child ever will: VmHWM must not report it
    held = np.ones(256 << 20, np.uint8)
    r = subprocess.run([sys.executable, "-c", f"print({HWM})"], capture_output=True, text=True, timeout=60)
    assert int(r.stdout) < 128 << 10 and held.sum() == 256 << 20


def test_12mp_denoise_with_the_shipped_model_peaks_under_2gb(tmp_path: Path) -> None:
    # default settings: shipped weights, auto strength (the noise makes it run the network), default tiles;
    # whole-image activations would take ~9 GB (672 bytes per pixel measured), so only tiling passes
    src = noisy_photo(tmp_path / "big.png")
    peak_kb, log = restore_peak_kb(str(src), "-o", str(tmp_path / "o.png"), "--task", "denoise")
    strength = re.search(r"denoise [\d.]+ s, sigma [\d.]+, strength ([\d.]+)", log)
    assert strength and float(strength.group(1)) == 1.0, log
    assert peak_kb < 2 * 1024 * 1024, f"peak RSS {peak_kb / 1024:.0f} MB"
    assert PILImage.open(tmp_path / "o.png").size == (4000, 3000)
