"""The BBCU evaluation protocol (models.eval, ``bbcu eval``) on small known cases."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models import archs, checkpoints
from models.config import denoise_config, sr_config
from models.engine import from_network
from models.eval import evaluate, record

BENCH = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "benchmarks"


def _keys(t: float) -> float:
    t = abs(t)
    if t <= 1:
        return 1.5 * t**3 - 2.5 * t**2 + 1
    return -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2 if t <= 2 else 0.0


def _resize_1d(v: np.ndarray, out_len: int) -> np.ndarray:
    """MATLAB bicubic imresize of one line by explicit loops (independent of models.degrade)."""
    n = len(v)
    s = out_len / n
    width = 4 / s if s < 1 else 4
    out = np.zeros(out_len)
    for u in range(1, out_len + 1):
        x = u / s + 0.5 * (1 - 1 / s)
        left = math.floor(x - width / 2)
        ws, acc = 0.0, 0.0
        for j in range(left, left + math.ceil(width) + 2):
            w = s * _keys(s * (x - j)) if s < 1 else _keys(x - j)
            k = j
            while k < 1 or k > n:
                k = 1 - k if k < 1 else 2 * n + 1 - k
            acc += w * v[k - 1]
            ws += w
        out[u - 1] = acc / ws
    return out


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    rows = np.stack([np.stack([_resize_1d(img[:, x, c], h) for x in range(img.shape[1])], 1)
                     for c in range(img.shape[2])], 2)
    return np.stack([np.stack([_resize_1d(rows[y, :, c], w) for y in range(h)], 0)
                     for c in range(img.shape[2])], 2)


def _q(a: np.ndarray) -> np.ndarray:
    return np.clip(np.round(a * 255), 0, 255)


def _folder(tmp_path: Path, n: int = 2, size: tuple[int, int] = (26, 30), gray: bool = False) -> Path:
    rng = np.random.default_rng(7)
    d = tmp_path / "imgs"
    d.mkdir()
    yy, xx = np.mgrid[0:size[0], 0:size[1]]
    for i in range(n):
        img = 128 + 90 * np.sin(xx / 2.5 + i) * np.cos(yy / 3.5)
        img = np.clip(img[..., None] + rng.normal(0, 10, (*size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img[..., 0] if gray else img).save(d / f"{i}.png")
    return d


def test_sr_bicubic_baseline_matches_independent_computation(tmp_path: Path) -> None:
    folder = _folder(tmp_path, n=1)
    cfg = sr_config(2, nf=4, depth=1)
    model = from_network(archs.build(cfg), cfg, backend="float")
    rep = evaluate(model, "sr", folder, tile=None)
    hr = np.asarray(Image.open(folder / "0.png"), dtype=np.float64)  # 26 x 30: already a multiple of 2
    lr = _q(_resize(hr / 255, 13, 15))
    bic = _q(_resize(lr / 255, 26, 30))
    ycoef = np.array([65.481, 128.553, 24.966]) / 255
    yb, yh = (bic / 255) @ ycoef * 255 + 16, (hr / 255) @ ycoef * 255 + 16
    mse = np.mean((yb[2:-2, 2:-2] - yh[2:-2, 2:-2]) ** 2)
    assert rep.rows[0].baseline_psnr == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-9)
    assert rep.setting == "x2" and np.isfinite(rep.rows[0].psnr)


def _identity_denoiser() -> tuple[torch.nn.Module, object]:
    cfg = denoise_config(nf=4, depth=4)
    net = archs.build(cfg)
    with torch.no_grad():
        net.model[-1].weight.zero_()  # predicts zero noise: out = input
    return net, cfg


def test_denoise_identity_network_scores_the_noisy_baseline(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    net, cfg = _identity_denoiser()
    model = from_network(net, cfg, backend="float")  # type: ignore[arg-type]
    rep = evaluate(model, "denoise", folder, sigma=25, tile=None)
    rng = np.random.RandomState(0)  # one seeded stream over the sorted images, as KAIR's scripts
    for row, name in zip(rep.rows, ["0.png", "1.png"], strict=True):
        gt = np.asarray(Image.open(folder / name), dtype=np.float64)
        noisy = _q(gt / 255 + rng.normal(0, 25 / 255, gt.shape))
        want = 10 * math.log10(255**2 / np.mean((noisy - gt) ** 2))
        assert row.baseline_psnr == pytest.approx(want, abs=1e-9)
        assert row.psnr == pytest.approx(row.baseline_psnr, abs=0.02)


def test_deblock_baseline_is_jpeg(tmp_path: Path) -> None:
    from models.config import deblock_config
    from models.degrade import jpeg
    from models.metrics import psnr

    folder = _folder(tmp_path, n=1, gray=True)
    cfg = deblock_config(nf=4, depth=3)
    rep = evaluate(from_network(archs.build(cfg), cfg, backend="float"), "deblock", folder, quality=10)
    gt = np.asarray(Image.open(folder / "0.png"))
    assert rep.rows[0].baseline_psnr == pytest.approx(psnr(jpeg(gt, 10), gt))
    assert rep.setting == "q10"


def test_color_deblock_eval_restores_as_the_service_does(tmp_path: Path) -> None:
    """``color``: the service's path, so a lightly compressed JPEG is scored as it is (strength 0 from
    quality 95 on) and a heavily compressed one through the full network."""
    from models.config import deblock_config
    from models.degrade import decode_jpeg, jpeg_bytes
    from models.metrics import psnr

    folder = _folder(tmp_path, n=1)
    gt = np.asarray(Image.open(folder / "0.png"))
    cfg = deblock_config(nf=4, depth=3, channels=3)
    model = from_network(archs.build(cfg), cfg, backend="float")
    light = evaluate(model, "deblock", folder, quality=97, color=True)
    assert light.rows[0].psnr == light.rows[0].baseline_psnr == pytest.approx(
        psnr(decode_jpeg(jpeg_bytes(gt, 97), gray=False), gt))
    heavy = evaluate(model, "deblock", folder, quality=10, color=True)
    assert heavy.rows[0].psnr != heavy.rows[0].baseline_psnr  # the (random) network ran


def test_cli_eval_json_record_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    folder = _folder(tmp_path)
    net, cfg = _identity_denoiser()
    w = checkpoints.save(tmp_path / "d.safetensors", net, cfg)  # type: ignore[arg-type]
    out = tmp_path / "r.json"
    code = main(["eval", "--task", "denoise", "--data", str(folder), "--weights", str(w), "--json", str(out),
                 "--record", "--quiet", "--backend", "float"])
    assert code == 0
    rep = json.loads(out.read_text())
    assert rep["images"] == 2 and rep["setting"] == "sigma25" and len(rep["rows"]) == 2
    assert "mean" in capsys.readouterr().out
    meta = checkpoints.read(w).metadata["eval"]
    assert meta["imgs/sigma25"]["psnr"] == pytest.approx(rep["mean"]["psnr"], abs=1e-3)
    assert main(["eval", "--task", "sr", "--data", str(tmp_path / "nope")]) == 2
    assert main(["eval", "--task", "sr", "--data", str(folder), "--weights", str(w)]) == 2
    assert "not sr" in capsys.readouterr().err
    assert main(["eval", "--task", "denoise", "--data", str(folder), "--scale", "2"]) == 2


def test_record_keeps_tensors(tmp_path: Path) -> None:
    from models.eval import Report, Row

    net, cfg = _identity_denoiser()
    w = checkpoints.save(tmp_path / "d.safetensors", net, cfg, metadata={"training": {"iterations": 3}})  # type: ignore[arg-type]
    before = checkpoints.read(w).state_dict
    rep = Report("denoise", "X", "sigma15", "noisy", "RGB", "d", "", [Row("a", 30.0, 0.9, 25.0, 0.7)])
    record(w, rep)
    after = checkpoints.read(w)
    assert after.metadata["eval"]["X/sigma15"]["psnr"] == 30.0
    assert after.metadata["eval"]["X/sigma15 psnr"] == 30.0
    assert after.metadata["eval"]["X/sigma15 psnr (noisy)"] == 25.0
    assert after.metadata["training"]["iterations"] == 3
    for k, v in before.items():
        assert torch.equal(v, after.state_dict[k])


@pytest.mark.skipif(not (BENCH / "CSet5").is_dir(), reason="shared benchmarks absent")
def test_set5_bicubic_x2_baseline_is_the_literature_value() -> None:
    """Bicubic x2 on Set5 (Y, MATLAB imresize) is 33.66-33.7 dB in the literature."""
    from models.degrade import bicubic_lr, imresize, to_float, to_uint8
    from models.metrics import y_psnr

    vals = []
    for f in sorted((BENCH / "CSet5").glob("*.png")):
        hr = np.asarray(Image.open(f).convert("RGB"))
        hr = hr[:hr.shape[0] // 2 * 2, :hr.shape[1] // 2 * 2]
        bic = to_uint8(imresize(to_float(bicubic_lr(hr, 2)), scale=2))
        vals.append(y_psnr(bic, hr, 2))
    assert 33.6 < float(np.mean(vals)) < 33.75
