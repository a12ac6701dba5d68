"""The ``bbcu`` command line end to end, in a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage

from models import load_model
from models.config import deblock_config, sr_config
from tests.factories import save_official, save_ours

ROOT = Path(__file__).resolve().parents[1]


def bbcu(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def _image(path: Path, size: tuple[int, int], mode: str = "RGB") -> Path:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    PILImage.fromarray(a).convert(mode).save(path)
    return path


def test_restore_sr_with_official_checkpoint_matches_engine(tmp_path: Path) -> None:
    ckpt, _ = save_official(tmp_path, sr_config(2, "m", nf=8, depth=2))
    a = _image(tmp_path / "a.png", (21, 17))
    b = _image(tmp_path / "b.png", (9, 12))
    r = bbcu("restore", str(a), str(b), "-o", str(tmp_path / "out"), "--task", "sr", "--scale", "2",
             "--weights", str(ckpt), "--tile", "16", "--quiet")
    assert r.returncode == 0, r.stderr
    out_a = np.asarray(PILImage.open(tmp_path / "out" / "a.png"))
    assert out_a.shape == (34, 42, 3)
    assert PILImage.open(tmp_path / "out" / "b.png").size == (18, 24)
    model = load_model(ckpt)
    x = torch.from_numpy(np.asarray(PILImage.open(a), np.float32).transpose(2, 0, 1) / 255)[None]
    ref = np.rint(model(x).clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255)
    assert np.abs(out_a.astype(np.float64) - ref).max() <= 1


def test_restore_single_file_output_and_format(tmp_path: Path) -> None:
    ckpt = save_ours(tmp_path, "db", deblock_config(nf=8, depth=4))
    src = _image(tmp_path / "in.jpg", (30, 20))
    r = bbcu("restore", str(src), "-o", str(tmp_path / "x.webp"), "--task", "deblock",
             "--weights", str(ckpt), "--quiet")
    assert r.returncode == 0, r.stderr
    im = PILImage.open(tmp_path / "x.webp")
    assert im.format == "WEBP" and im.size == (30, 20)


def test_restore_errors_are_messages_not_tracebacks(tmp_path: Path) -> None:
    ckpt = save_ours(tmp_path, "db", deblock_config(nf=8, depth=4))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    good = _image(tmp_path / "good.png", (10, 10))
    r = bbcu("restore", str(bad), str(good), "-o", str(tmp_path / "o"), "--task", "deblock",
             "--weights", str(ckpt), "--quiet")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "bad.png" in r.stderr and "not a readable image" in r.stderr
    assert (tmp_path / "o" / "good.png").exists()  # the other file is still restored
    r = bbcu("restore", str(good), "-o", str(tmp_path / "o2"), "--task", "sr", "--scale", "3",
             "--weights", str(ckpt))
    assert r.returncode == 2 and "deblock" in r.stderr and "Traceback" not in r.stderr
    r = bbcu("restore", str(tmp_path / "missing.png"), "-o", "x", "--task", "denoise")
    assert r.returncode == 2 and "no such file" in r.stderr
    r = bbcu("restore", str(good), "-o", "x", "--task", "denoise", "--weights", str(bad))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "bad.png" in r.stderr


def test_info_describes_an_official_checkpoint(tmp_path: Path) -> None:
    ckpt, _ = save_official(tmp_path, sr_config(4, "m", nf=8, depth=3), prefix="module.")
    r = bbcu("info", str(ckpt))
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["config"]["scale"] == 4 and info["config"]["depth"] == 3
    assert info["variant"] == "m" and info["format"] == "official" and len(info["sha256"]) == 64
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"junk")
    r = bbcu("info", str(junk))
    assert r.returncode == 2 and "junk.pth" in r.stderr and "Traceback" not in r.stderr


def test_models_lists_the_catalogue_as_json() -> None:
    r = bbcu("models", "--json")
    assert r.returncode == 0, r.stderr
    entries = json.loads(r.stdout)
    shipped = sorted(p.stem for p in (ROOT / "models" / "weights").glob("*.safetensors"))
    assert sorted(e["name"] for e in entries) == shipped
