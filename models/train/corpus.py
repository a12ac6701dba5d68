"""Assemble the open training corpus from package registries only (no model or data hubs).

BBCU (Xia et al., ICLR 2023) trains on DIV2K, which this project cannot redistribute or fetch. The
open substitute: photographs shipped in Debian wallpaper packages (``apt-get download`` +
``dpkg-deb -x``, nothing installed), the photos of the ``mvtb-data`` wheel on PyPI, and the
``train-extra`` folder next to the repository. Large, smooth, JPEG-compressed wallpapers are
downscaled by 0.5 (antialiased bicubic), which removes most compression artefacts. Evaluation images
are excluded (``58060.png`` of mvtb-data is a BSD100 test image; ``campus/holdout`` is a held-out
set). Every written file is listed with its SHA-256 in ``manifest.json``.
"""

from __future__ import annotations

import fnmatch
import io
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from models.hashing import sha256_file

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
Log = Callable[[str], None]


@dataclass(frozen=True)
class DebSource:
    """A Debian package and the globs (inside the unpacked tree) of the photos it holds."""

    package: str
    globs: tuple[str, ...]
    downscale: bool = True


DEB_SOURCES = (
    DebSource("mate-backgrounds", ("usr/share/backgrounds/mate/nature/*.jpg",)),
    DebSource("lomiri-wallpapers-16.04", ("usr/share/backgrounds/*.jpg",)),
    DebSource("lomiri-wallpapers-20.04", ("usr/share/backgrounds/*.jpg",)),
    DebSource("plasma-workspace-wallpapers", ("usr/share/wallpapers/*/contents/images/2560x1600.jpg",)),
    DebSource("lxqt-themes", ("usr/share/lxqt/wallpapers/*.jpg", "usr/share/lxqt/wallpapers/*.png")),
    DebSource("lifeograph", ("usr/share/net.sourceforge.Lifeograph/backgrounds/*.jpg",
                             "usr/share/net.sourceforge.Lifeograph/backgrounds/*.png")),
    DebSource("palapeli-data", ("usr/share/palapeli/collection/*.jpg",)),
)
PYPI_SOURCE = ("mvtb-data", "1.6.1", "mvtbdata/images/")
PYPI_EXCLUDE = ("*/58060.png", "*/campus/holdout/*")
# Images whose mean gradient (8-bit levels per pixel, before downscaling) is below this are flat
# graphics or colour gradients.
MIN_GRADIENT = 1.0


class CorpusError(RuntimeError):
    """A corpus source could not be fetched or unpacked."""


def mean_gradient(img: np.ndarray) -> float:
    """Mean absolute horizontal + vertical difference of the gray image, in 8-bit levels."""
    g = img.astype(np.float32).mean(axis=2) if img.ndim == 3 else img.astype(np.float32)
    return float(np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean())


def _run(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise CorpusError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")


def _write(src_img: Image.Image, dest: Path, downscale: bool) -> tuple[int, int]:
    img = src_img.convert("RGB")
    if downscale:
        img = reduce_half(img)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # level 1: these files are read once per training run; level 6 tripled the corpus build time
    img.save(dest, format="PNG", compress_level=1)
    return img.height, img.width


def reduce_half(img: Image.Image) -> Image.Image:
    """Halve an image with Pillow's antialiased bicubic (the kernel of MATLAB's imresize, a = -0.5),
    in C: the numpy imresize of the evaluation protocol took minutes per wallpaper on a busy CPU."""
    return img.resize((img.width // 2, img.height // 2), Image.Resampling.BICUBIC)


def _add(entries: list[dict[str, object]], out: Path, rel: str, img: Image.Image, origin: str,
         downscale: bool, log: Log) -> None:
    arr = np.asarray(img.convert("RGB"))
    grad = mean_gradient(arr)
    if grad < MIN_GRADIENT:
        log(f"  skip {origin}: mean gradient {grad:.2f} (a gradient or flat graphic)")
        return
    dest = out / rel
    h, w = _write(img, dest, downscale)
    entries.append({"file": rel, "sha256": sha256_file(dest), "origin": origin, "height": h, "width": w,
                    "downscaled": downscale})


def fetch_debs(out: Path, work: Path, entries: list[dict[str, object]], log: Log) -> None:
    for src in DEB_SOURCES:
        pkg_dir = work / src.package
        pkg_dir.mkdir(parents=True, exist_ok=True)
        log(f"apt-get download {src.package}")
        _run(["apt-get", "download", src.package], pkg_dir)
        debs = sorted(pkg_dir.glob("*.deb"))
        if not debs:
            raise CorpusError(f"apt-get download {src.package} produced no .deb")
        tree = pkg_dir / "tree"
        _run(["dpkg-deb", "-x", str(debs[0]), str(tree)], pkg_dir)
        files = sorted({p for g in src.globs for p in tree.glob(g)})
        log(f"  {len(files)} candidate images from {debs[0].name}")
        for f in files:
            # plasma wallpapers are all called 2560x1600.jpg: name them after their theme folder
            stem = f.parent.parent.parent.name if src.package.startswith("plasma") else f.stem
            name = stem + ".png"
            rel = f"deb/{src.package}/{name}"
            with Image.open(f) as img:
                _add(entries, out, rel, img, f"debian:{debs[0].name}:{f.relative_to(tree)}",
                     src.downscale, log)


def fetch_pypi(out: Path, work: Path, entries: list[dict[str, object]], log: Log) -> None:
    name, version, prefix = PYPI_SOURCE
    log(f"pip download --no-deps {name}=={version}")
    _run([sys.executable, "-m", "pip", "download", "--no-deps", f"{name}=={version}", "-d", str(work)],
         work)
    wheels = sorted(work.glob("*.whl"))
    if not wheels:
        raise CorpusError(f"pip download {name}=={version} produced no wheel")
    with zipfile.ZipFile(wheels[0]) as zf:
        members = [m for m in zf.namelist()
                   if m.startswith(prefix) and m.lower().endswith(IMAGE_EXTS)
                   and not any(fnmatch.fnmatch(m, pat) for pat in PYPI_EXCLUDE)]
        log(f"  {len(members)} candidate images in {wheels[0].name}")
        for m in sorted(members):
            with zf.open(m) as fh:
                data = fh.read()
            with Image.open(io.BytesIO(data)) as img:
                if img.mode not in ("RGB", "RGBA", "P", "L") or min(img.size) < 96:
                    log(f"  skip {m}: mode {img.mode}, size {img.size}")
                    continue
                if img.mode == "L":
                    log(f"  skip {m}: grayscale")
                    continue
                rel = "pypi/mvtb-data/" + m[len(prefix):].replace("/", "_").rsplit(".", 1)[0] + ".png"
                _add(entries, out, rel, img, f"pypi:{wheels[0].name}:{m}", False, log)


def copy_extra(out: Path, extra: Path, entries: list[dict[str, object]], log: Log) -> None:
    files = sorted(p for p in extra.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    log(f"{len(files)} images from {extra}")
    for f in files:
        rel = f"extra/{f.relative_to(extra).with_suffix('').as_posix().replace('/', '_')}.png"
        with Image.open(f) as img:
            _add(entries, out, rel, img, f"local:{f.name}", False, log)


def build_corpus(out: Path, extra: list[Path] | None = None, *, debs: bool = True, pypi: bool = True,
                 log: Log = print) -> Path:
    """Fetch every source into ``out`` and write ``out/manifest.json``; returns the manifest path."""
    out.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="bbcu-corpus-") as tmp:
        work = Path(tmp)
        if debs:
            if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
                raise CorpusError("apt-get and dpkg-deb are needed for the Debian sources "
                                  "(use --no-debs to skip them)")
            fetch_debs(out, work / "deb", entries, log)
        if pypi:
            (work / "pypi").mkdir()
            fetch_pypi(out, work / "pypi", entries, log)
    for e in extra or []:
        if not e.is_dir():
            raise CorpusError(f"{e}: not a folder")
        copy_extra(out, e, entries, log)
    return write_manifest(out, entries)


def write_manifest(out: Path, entries: list[dict[str, object]]) -> Path:
    manifest = {"format": "bbcu-corpus-1", "count": len(entries),
                "files": sorted(entries, key=lambda e: str(e["file"]))}
    path = out / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return path
