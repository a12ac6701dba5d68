"""Training data beyond the paper's recipe: the portable corpus shard, color JPEG deblocking, and
`bbcu train` / `bbcu eval` on a machine without the service's packages (a GPU box)."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models import checkpoints
from models.degrade import jpeg
from models.train import data
from models.train.loop import TrainConfig, train
from models.train.shard import ShardError, read_shard, write_shard

ROOT = Path(__file__).resolve().parents[1]


def _photos(folder: Path, n: int = 4, size: tuple[int, int] = (90, 120)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:size[0], 0:size[1]]
    out = []
    for i in range(n):
        base = 127 + 90 * np.sin(xx / (3 + i)) * np.cos(yy / (5 + i))
        img = np.clip(base[..., None] + rng.normal(0, 6, (*size, 3)), 0, 255).astype(np.uint8)
        out.append(folder / f"p{i}.png")
        Image.fromarray(img).save(out[-1])
    return out


def test_shard_round_trip_reduces_large_images(tmp_path: Path) -> None:
    files = _photos(tmp_path / "src", size=(90, 120))
    manifest = write_shard(files, tmp_path / "c.tar", max_side=60, log=lambda _: None)
    members = manifest["members"]
    assert isinstance(members, list) and len(members) == 4
    assert all(max(m["width"], m["height"]) == 60 for m in members)
    got = read_shard(tmp_path / "c.tar")
    assert [n for n, _ in got] == [m["name"] for m in members]
    with Image.open(io.BytesIO(got[0][1])) as im:
        assert im.size == (60, 45) and im.format == "JPEG"


def test_shard_rejects_corruption_and_wrong_files(tmp_path: Path) -> None:
    files = _photos(tmp_path / "src", n=2)
    write_shard(files, tmp_path / "c.tar", log=lambda _: None)
    with tarfile.open(tmp_path / "c.tar") as src, tarfile.open(tmp_path / "bad.tar", "w") as dst:
        for m in src.getmembers():
            blob = src.extractfile(m).read()  # type: ignore[union-attr]
            if m.name.endswith(".jpg") and m.name.startswith("0000"):
                blob = blob[:-10] + b"0123456789"
            m.size = len(blob)
            dst.addfile(m, io.BytesIO(blob))
    with pytest.raises(ShardError, match="corrupt"):
        read_shard(tmp_path / "bad.tar")
    (tmp_path / "junk.tar").write_bytes(b"not a tar")
    with pytest.raises(ShardError):
        read_shard(tmp_path / "junk.tar")
    with pytest.raises(ShardError, match="end in .tar"):
        write_shard(files, tmp_path / "c.zip", log=lambda _: None)


def test_training_from_a_shard_equals_training_from_its_folder(tmp_path: Path) -> None:
    """The shard is only a container: the same images give the same run."""
    files = _photos(tmp_path / "src")
    write_shard(files, tmp_path / "c.tar", max_side=4096, log=lambda _: None)
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    for name, blob in read_shard(tmp_path / "c.tar"):
        (unpacked / name).write_bytes(blob)
    kw: dict[str, object] = dict(task="denoise", nf=8, depth=4, iters=6, batch=2, patch=24, lr=2e-3,
                                 milestones=(1000,), val_every=3, val_images=1, save_every=3, threads=1,
                                 min_gradient=0.0)
    a = train(TrainConfig(data=(str(tmp_path / "c.tar"),), run_dir=str(tmp_path / "a"),
                          out=str(tmp_path / "a.safetensors"), **kw),  # type: ignore[arg-type]
              log=lambda _: None, progress=False)
    b = train(TrainConfig(data=(str(unpacked),), run_dir=str(tmp_path / "b"),
                          out=str(tmp_path / "b.safetensors"), **kw),  # type: ignore[arg-type]
              log=lambda _: None, progress=False)
    assert a.val_psnr == b.val_psnr
    ma = checkpoints.read(tmp_path / "a.safetensors").metadata["training"]
    mb = checkpoints.read(tmp_path / "b.safetensors").metadata["training"]
    assert ma["data_manifest_sha256"] == mb["data_manifest_sha256"] and ma["images"] == 4


def test_color_deblock_degradation_is_a_420_color_jpeg() -> None:
    rng = np.random.default_rng(0)
    hr = np.asarray(Image.open(_photos(Path(tempfile.mkdtemp()), n=1, size=(64, 64))[0]).convert("RGB"))
    spec = data.DegradeSpec("deblock", 64, channels=3, quality_min=20, quality_max=20)
    lq, gt = data.degrade(hr, spec, rng)
    assert lq.shape == gt.shape == (64, 64, 3)
    np.testing.assert_array_equal(lq, jpeg(hr, 20).astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(gt, hr.astype(np.float32) / np.float32(255))
    # qualities are drawn from the configured range only: every draw is one of its encodings
    spec = data.DegradeSpec("deblock", 64, channels=3, quality_min=30, quality_max=31)
    allowed = [jpeg(hr, q).astype(np.float32) / np.float32(255) for q in (30, 31)]
    for _ in range(6):
        lq, _ = data.degrade(hr, spec, rng)
        assert any(np.array_equal(lq, a) for a in allowed)
    with pytest.raises(ValueError, match="channels"):
        data.DegradeSpec("deblock", 16, channels=2)


def test_color_deblock_network_trains_and_evaluates_on_rgb(tmp_path: Path) -> None:
    from models.engine import load_model
    from models.eval import evaluate

    files = _photos(tmp_path / "src")
    cfg = TrainConfig(task="deblock", channels=3, data=(str(tmp_path / "src"),), nf=8, depth=4, iters=4,
                      batch=2, patch=24, lr=2e-3, milestones=(1000,), val_every=2, val_images=1,
                      save_every=2, threads=1, min_gradient=0.0, quality_min=10, quality_max=30,
                      run_dir=str(tmp_path / "r"), out=str(tmp_path / "c.safetensors"))
    train(cfg, log=lambda _: None, progress=False)
    assert files
    model = load_model(tmp_path / "c.safetensors")
    assert model.config.task == "deblock" and model.config.in_nc == 3 and model.config.bias
    bench = tmp_path / "bench"
    _photos(bench, n=2, size=(48, 64))
    rep = evaluate(model, "deblock", bench, quality=10, limit=2)
    assert rep.metric.startswith("RGB")
    first = np.asarray(Image.open(sorted(bench.glob("*.png"))[0]).convert("RGB"))
    from models.metrics import psnr
    assert rep.rows[0].baseline_psnr == pytest.approx(psnr(jpeg(first, 10), first))


def test_catalog_defaults_to_bbcu_l_and_the_gray_deblocker(tmp_path: Path) -> None:
    from models import archs, catalog
    from models.config import deblock_config, sr_config

    for name, cfg in [("bbcu-sr-x2", sr_config(2, "l", nf=8, depth=1)),
                      ("bbcu-sr-x2-m", sr_config(2, "m", nf=8, depth=1)),
                      ("bbcu-deblock", deblock_config(nf=8, depth=3)),
                      ("bbcu-deblock-color", deblock_config(nf=8, depth=3, channels=3))]:
        checkpoints.save(tmp_path / f"{name}.safetensors", archs.build(cfg), cfg)
    assert catalog.find("sr", 2, weights_dir=tmp_path).name == "bbcu-sr-x2"
    assert catalog.find("sr", 2, "m", weights_dir=tmp_path).name == "bbcu-sr-x2-m"
    assert catalog.find("deblock", weights_dir=tmp_path).name == "bbcu-deblock"
    assert catalog.find("deblock", weights_dir=tmp_path, channels=3).name == "bbcu-deblock-color"


_BLOCK_SERVICE = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'fastapi', 'pydantic', 'pydantic_settings', 'celery', 'redis',
                                  'uvicorn', 'starlette', 'kombu', 'httpx'}:
            raise ModuleNotFoundError(f'No module named {name!r}', name=name)
        return None
sys.meta_path.insert(0, Blocker())
from cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.service  # runs `bbcu` in its own process
def test_train_and_eval_run_without_the_service_packages(tmp_path: Path) -> None:
    """A GPU machine may lack pydantic, fastapi, celery and redis: training must not need them."""
    _photos(tmp_path / "src")
    write_shard(sorted((tmp_path / "src").glob("*.png")), tmp_path / "c.tar", log=lambda _: None)
    run = [sys.executable, "-c", _BLOCK_SERVICE]
    out = tmp_path / "w.safetensors"
    r = subprocess.run([*run, "train", "--task", "deblock", "--channels", "3",
                        "--data", str(tmp_path / "c.tar"),
                        "--width", "8", "--depth", "4", "--iters", "3", "--batch", "2", "--patch", "24",
                        "--val-images", "1", "--min-gradient", "0", "--threads", "1", "--no-progress",
                        "--run-dir", str(tmp_path / "r"), "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "trained 3 iterations" in r.stdout and out.is_file()
    r = subprocess.run([*run, "eval", "--task", "deblock", "--weights", str(out),
                        "--data", str(tmp_path / "src"), "--limit", "1", "--quiet"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "RGB PSNR" in r.stdout


def test_shipped_catalogue_is_strict_json_and_sigma0_baseline_is_null() -> None:
    """GET /models serves these summaries: an infinite PSNR (a sigma-0 run's baseline) must not
    reach the JSON encoder, which refuses it."""
    import json

    from models import catalog
    from models.eval import Report, Row

    rep = Report("denoise", "x", "sigma0", "noisy", "RGB", "m", "", [Row("a", 40.0, 0.99, float("inf"), 1.0)])
    assert rep.summary()["baseline_psnr"] is None and rep.summary()["psnr"] == 40.0
    names = {e.name for e in catalog.entries()}
    assert {"bbcu-sr-x2-m", "bbcu-sr-x3-m", "bbcu-sr-x4-m", "bbcu-deblock-color"} <= names
    for e in catalog.entries():
        json.dumps(e.summary(), allow_nan=False)
        assert e.metadata.get("eval"), f"{e.name} carries no measured results"
