"""Peak memory stays bounded by the tile size: a 4000x3000 photo through the CLI under 2 GB RSS."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from models.config import denoise_config
from tests.factories import save_ours

ROOT = Path(__file__).resolve().parents[1]


def test_large_photo_denoise_peak_rss_under_2gb(tmp_path: Path) -> None:
    # 16 features: whole-image activations would take several 768 MB tensors; only tiling passes
    ckpt = save_ours(tmp_path, "dn", denoise_config(nf=16, depth=3))
    yy, xx = np.mgrid[0:3000, 0:4000]
    rgb = np.stack([xx * 255 // 4000, yy * 255 // 3000, (xx + yy) % 256], axis=-1).astype(np.uint8)
    src = tmp_path / "big.png"
    PILImage.fromarray(rgb).save(src, compress_level=1)
    script = (
        "import resource, sys; from cli.main import main; code = main(sys.argv[1:]); "
        "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)")
    r = subprocess.run([sys.executable, "-c", script, "restore", str(src), "-o", str(tmp_path / "o.png"),
                        "--task", "denoise", "--weights", str(ckpt), "--quiet"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    peak_kb = int(r.stdout.split("MAXRSS_KB")[1].split()[0])
    assert peak_kb < 2 * 1024 * 1024, f"peak RSS {peak_kb / 1024:.0f} MB"
    assert PILImage.open(tmp_path / "o.png").size == (4000, 3000)
