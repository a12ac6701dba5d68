"""The ``bbcu`` command line end to end, in a real subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from cli.main import main
from models import load_model
from models.config import deblock_config, sr_config
from tests.factories import save_official, save_ours

pytestmark = pytest.mark.service  # runs `bbcu` (or a child) in its own process: not in test-quick

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


class Ran:
    def __init__(self, returncode: int, stderr: str) -> None:
        self.returncode, self.stderr = returncode, stderr


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> Ran:
    """The CLI in this process (saves a torch import per call); stderr is not a terminal here."""
    capsys.readouterr()
    code = main(list(args))
    return Ran(code, capsys.readouterr().err)


def _tiny_weights(tmp_path: Path) -> dict[str, Path]:
    from models.config import denoise_config

    return {"deblock": save_ours(tmp_path, "db", deblock_config(nf=8, depth=3), seed=1),
            "denoise": save_ours(tmp_path, "dn", denoise_config(nf=8, depth=3), seed=2)}


def test_inputs_are_never_overwritten_and_outputs_only_with_overwrite(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = _tiny_weights(tmp_path)["deblock"]
    photos = tmp_path / "photos"
    photos.mkdir()
    a = _image(photos / "a.png", (12, 10))
    original = a.read_bytes()
    base = ("--task", "deblock", "--weights", str(ckpt), "--quiet")
    r = run_main(capsys, "restore", str(a), "-o", str(a), *base)
    assert r.returncode == 2 and "inputs are never overwritten" in r.stderr
    r = run_main(capsys, "restore", str(a), "-o", str(photos), *base)  # into the input's own folder
    assert r.returncode == 2 and "is an input" in r.stderr
    # not even with --overwrite
    r = run_main(capsys, "restore", str(a), "-o", str(photos), "--overwrite", *base)
    assert r.returncode == 2 and a.read_bytes() == original
    out = tmp_path / "out.png"
    out.write_bytes(b"precious")
    r = run_main(capsys, "restore", str(a), "-o", str(out), *base)
    assert r.returncode == 2 and "output exists" in r.stderr and out.read_bytes() == b"precious"
    r = run_main(capsys, "restore", str(a), "-o", str(out), "--overwrite", *base)
    assert r.returncode == 0, r.stderr
    assert PILImage.open(out).size == (12, 10)
    # the same folder with another format is fine: a.webp next to a.png
    r = run_main(capsys, "restore", str(a), "-o", str(photos), "--format", "webp", *base)
    assert r.returncode == 0, r.stderr
    assert PILImage.open(photos / "a.webp").format == "WEBP" and a.read_bytes() == original


def test_output_paths_that_cannot_work_are_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = _tiny_weights(tmp_path)["deblock"]
    a = _image(tmp_path / "a.png", (8, 8))
    b = _image(tmp_path / "b.png", (8, 8))
    base = ("--task", "deblock", "--weights", str(ckpt), "--quiet")
    r = run_main(capsys, "restore", str(a), "-o", str(tmp_path / "out.bmp"), *base)
    assert r.returncode == 2 and "cannot write .bmp" in r.stderr
    assert not (tmp_path / "out.bmp").exists()
    r = run_main(capsys, "restore", str(a), str(b), "-o", str(tmp_path / "both.png"), *base)
    assert r.returncode == 2 and "names a file but there are 2 inputs" in r.stderr
    (tmp_path / "jpegs").mkdir()
    c = tmp_path / "jpegs" / "a.jpg"
    PILImage.open(a).save(c)
    r = run_main(capsys, "restore", str(a), str(c), "-o", str(tmp_path / "o"), *base)
    assert r.returncode == 2 and "would both be written" in r.stderr
    r = run_main(capsys, "restore", str(a), "-o", str(tmp_path / "o"), "--task", "sr", "--scale", "0",
                 "--quiet")
    assert r.returncode == 2 and "scale 0 is not supported" in r.stderr


def test_folders_recursive_and_plain_progress_lines(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = _tiny_weights(tmp_path)["deblock"]
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    _image(src / "x.png", (8, 8))
    _image(src / "sub" / "y.png", (9, 7))
    (src / "notes.txt").write_text("not an image")
    base = ("--task", "deblock", "--weights", str(ckpt))
    r = run_main(capsys, "restore", str(src), "-o", str(tmp_path / "flat"), *base)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "flat").rglob("*")) == ["x.png"]
    # stderr is a pipe here: one plain line per file, no progress bar control characters
    assert "\r" not in r.stderr and "x.png ->" in r.stderr and "deblock" in r.stderr
    r = run_main(capsys, "restore", str(src), "-o", str(tmp_path / "deep"), "--recursive", *base)
    assert r.returncode == 0, r.stderr
    assert PILImage.open(tmp_path / "deep" / "sub" / "y.png").size == (9, 7)
    assert (tmp_path / "deep" / "x.png").is_file() and len(r.stderr.splitlines()) == 2


def test_pipeline_equals_the_stages_one_after_the_other(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    w = tmp_path / "w"
    w.mkdir()
    from models import catalog
    from models.config import denoise_config

    save_ours(w, "tiny-denoise", denoise_config(nf=8, depth=3), seed=3)
    save_ours(w, "tiny-sr", sr_config(2, "l", nf=8, depth=1), seed=4)
    monkeypatch.setattr(catalog, "WEIGHTS_DIR", w)  # the shipped-weights lookup, pointed at tiny ones
    a = _image(tmp_path / "a.png", (20, 16))

    def run(*args: str) -> Ran:
        return run_main(capsys, *args)

    r = run("restore", str(a), "-o", str(tmp_path / "piped.png"), "--task", "denoise,sr", "--scale", "2",
            "--strength", "1")
    assert r.returncode == 0, r.stderr
    assert "denoise" in r.stderr and "strength 1.00" in r.stderr
    assert run("restore", str(a), "-o", str(tmp_path / "d.png"), "--task", "denoise", "--strength", "1",
               "--quiet").returncode == 0
    assert run("restore", str(tmp_path / "d.png"), "-o", str(tmp_path / "ds.png"), "--task", "sr",
               "--scale", "2", "--quiet").returncode == 0
    piped = np.asarray(PILImage.open(tmp_path / "piped.png"))
    stepwise = np.asarray(PILImage.open(tmp_path / "ds.png"))
    assert piped.shape == (32, 40, 3)
    # the stepwise run rounds to 8 bits between the stages; the pipeline keeps floats
    assert np.abs(piped.astype(int) - stepwise.astype(int)).max() <= 2
    r = run("restore", str(a), "-o", str(tmp_path / "bad.png"), "--task", "sr,denoise")
    assert r.returncode == 2 and "sr must come last" in r.stderr
    r = run("restore", str(a), "-o", str(tmp_path / "bad.png"), "--task", "sr", "--strength", "0.5")
    assert r.returncode == 2 and "strength applies to the denoise stage" in r.stderr


def test_info_by_catalogue_name_and_on_a_non_checkpoint(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    name = sorted(p.stem for p in (ROOT / "models" / "weights").glob("*.safetensors"))[0]
    capsys.readouterr()
    assert main(["info", name]) == 0
    assert len(json.loads(capsys.readouterr().out)["sha256"]) == 64
    png = _image(tmp_path / "photo.png", (8, 8))
    r = run_main(capsys, "info", str(png))
    assert r.returncode == 2 and "not a checkpoint" in r.stderr and "weights_only" not in r.stderr
    r = run_main(capsys, "info", "no-such-model")
    assert r.returncode == 2 and "unknown model 'no-such-model'" in r.stderr


def _readme_figures(name: str) -> list[str]:
    """The PSNR figures (dB) the README's quality table gives for a shipped model: the network's and
    the baseline's ("inf" for a noise-free input), not the SSIMs."""
    figures: list[str] = []
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith(f"| `{name}`"):
            cells = line.split("|")[3:5]
            figures += re.findall(r"\b\d{2}\.\d\d\b|\binf\b", " ".join(cells))
    return figures


def test_models_table_is_aligned_and_says_what_the_readme_says(capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "None" not in "\n".join(lines)
    header = lines[0]
    starts = [m.start() for m in re.finditer(r"(?<=  )\S", header)]  # where columns 2.. begin
    for line in lines[1:]:
        for start in starts:  # every cell starts (or is blank) at its column: nothing pushed aside
            assert len(line) <= start or line[start - 1] == " ", line
    by_model: dict[str, str] = {}
    current = ""
    for line in lines[1:]:
        current = line.split()[0] if not line.startswith(" ") else current
        by_model[current] = by_model.get(current, "") + line + "\n"
    for name, rows in by_model.items():
        figures = _readme_figures(name)
        assert figures, name
        for figure in figures:  # the README's figures, rounded the README's way, every sigma shown
            assert re.search(rf"(?<![\d.]){re.escape(figure)}(?![\d.])", rows), (name, figure, rows)
    assert re.findall(r"CBSD68/sigma(\d+)", by_model["bbcu-denoise"]) == ["0", "5", "15", "25", "50"]


def test_eval_runs_from_any_folder_with_a_shipped_name(tmp_path: Path) -> None:
    data = tmp_path / "somewhere" / "else"
    data.mkdir(parents=True)
    _image(data / "a.png", (40, 32))
    cli = Path(sys.executable).with_name("bbcu")
    r = subprocess.run([str(cli), "eval", "--task", "denoise", "--sigma", "25", "--data", "else",
                        "--weights", "bbcu-denoise", "--quiet"], cwd=data.parent, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "a.png" in r.stdout and "mean" in r.stdout
    r = subprocess.run([str(cli), "eval", "--task", "denoise", "--data", "else", "--weights", "bbcu-nope"],
                       cwd=data.parent, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "unknown model 'bbcu-nope'" in r.stderr


def test_restore_url_in_a_pipe_writes_plain_lines(tiny_weights: Path, tmp_path: Path) -> None:
    from tests.test_service_store import serve_in_thread
    from workers.settings import Settings

    sources = [_image(tmp_path / f"{n}.png", (24, 24)) for n in "ab"]
    with serve_in_thread(Settings(weights_dir=tiny_weights, torch_threads=1)) as url:
        r = subprocess.run([sys.executable, "-m", "cli.main", "restore", *map(str, sources), "-o",
                            str(tmp_path / "out"), "--task", "denoise", "--url", url], cwd=ROOT,
                           capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert b"\r" not in r.stderr  # no progress bar redraws in a pipe
    lines = r.stderr.decode().splitlines()
    assert sorted(line.split(" -> ")[0] for line in lines) == sorted(map(str, sources)), lines


def test_auto_denoise_that_changes_nothing_says_so(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    clean = tmp_path / "clean.png"
    PILImage.new("RGB", (32, 32), (120, 160, 200)).save(clean)
    weights = _tiny_weights(tmp_path)["denoise"]
    r = run_main(capsys, "restore", str(clean), "-o", str(tmp_path / "out.png"), "--task", "denoise",
                 "--weights", str(weights))
    assert r.returncode == 0, r.stderr
    assert "strength 0.00 (unchanged: the noise is below the level auto denoise acts on)" in r.stderr
    assert np.array_equal(np.asarray(PILImage.open(tmp_path / "out.png")), np.asarray(PILImage.open(clean)))


def test_deblock_of_a_lightly_compressed_jpeg_says_it_left_it_as_it_was(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.tiles import photo
    from models.degrade import to_uint8

    src = tmp_path / "light.jpg"
    PILImage.fromarray(to_uint8(photo(40, 32, seed=3))).save(src, quality=97)
    weights = _tiny_weights(tmp_path)["deblock"]
    r = run_main(capsys, "restore", str(src), "-o", str(tmp_path / "out.png"), "--task", "deblock",
                 "--weights", str(weights))
    assert r.returncode == 0, r.stderr
    assert ("JPEG quality 97, strength 0.00 (unchanged: the JPEG is too lightly compressed for the "
            "deblocker to improve it)") in r.stderr
    assert np.array_equal(np.asarray(PILImage.open(tmp_path / "out.png")), np.asarray(PILImage.open(src)))


def test_bbcu_turns_on_huge_pages_for_torch_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's allocator reads THP_MEM_ALLOC_ENABLE when it loads: `bbcu` sets it first (workers and
    the engine inherit it) and leaves a value the user gave alone."""
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    assert main(["models"]) == 0
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "1"
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")
    assert main(["models"]) == 0
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "0"
