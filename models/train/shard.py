"""The training corpus as one compact, portable file (a plain tar of JPEG files and a manifest).

A GPU machine is often reached for a few minutes with nothing but the repository: the corpus must
travel with it. ``write_shard`` re-encodes every image of one or more folders as a high-quality
JPEG (4:4:4, no chroma subsampling), after reducing images whose longer side exceeds ``max_side``
with an antialiased bicubic (which also removes most of the wallpapers' own compression artefacts), and
writes them into an uncompressed tar with ``manifest.json`` (name, size, SHA-256 of each member and
of its source). ``bbcu train --data corpus.tar`` reads the shard directly, in memory.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

SHARD_SUFFIX = ".tar"
MANIFEST = "manifest.json"
SHARD_FORMAT = "bbcu-corpus-shard-1"
Log = Callable[[str], None]


class ShardError(ValueError):
    """The shard file is missing, malformed or does not match its manifest."""


def _reduce(img: Image.Image, max_side: int) -> Image.Image:
    w, h = img.size
    if max(w, h) <= max_side:
        return img
    f = max_side / max(w, h)
    # Pillow's antialiased bicubic: the kernel of MATLAB's imresize, in C
    return img.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BICUBIC)


def write_shard(files: Sequence[Path], out: Path, *, max_side: int = 768, quality: int = 95,
                log: Log = print) -> dict[str, object]:
    """Pack ``files`` (images) into ``out``; returns the manifest written into it."""
    if out.suffix != SHARD_SUFFIX:
        raise ShardError(f"{out}: a shard file must end in {SHARD_SUFFIX}")
    if not files:
        raise ShardError("no images to pack")
    members: list[dict[str, object]] = []
    tmp = out.with_suffix(".partial")
    with tarfile.open(tmp, "w") as tar:
        for i, path in enumerate(files):
            raw = path.read_bytes()
            with Image.open(io.BytesIO(raw)) as im:
                img = _reduce(im.convert("RGB"), max_side)
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=quality, subsampling=0)
            data = buf.getvalue()
            name = f"{i:04d}-{path.stem}.jpg"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            members.append({"name": name, "source": path.name, "width": img.width, "height": img.height,
                            "sha256": hashlib.sha256(data).hexdigest(),
                            "source_sha256": hashlib.sha256(raw).hexdigest()})
        manifest: dict[str, object] = {"format": SHARD_FORMAT, "max_side": max_side, "quality": quality,
                                       "members": members}
        blob = json.dumps(manifest, indent=1).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    tmp.replace(out)
    log(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {len(members)} images)")
    return manifest


def read_shard(path: Path) -> list[tuple[str, bytes]]:
    """(member name, encoded image) for every image of the shard, checked against its manifest."""
    try:
        with tarfile.open(path, "r:") as tar:
            blobs = {m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
                     for m in tar.getmembers() if m.isfile()}
    except (OSError, tarfile.TarError) as e:
        raise ShardError(f"{path}: not a readable shard ({e})") from e
    try:
        manifest = json.loads(blobs.pop(MANIFEST))
    except (KeyError, json.JSONDecodeError) as e:
        raise ShardError(f"{path}: no valid {MANIFEST}") from e
    if manifest.get("format") != SHARD_FORMAT:
        raise ShardError(f"{path}: unknown shard format {manifest.get('format')!r}")
    out = []
    for m in manifest["members"]:
        data = blobs.get(m["name"])
        if data is None or hashlib.sha256(data).hexdigest() != m["sha256"]:
            raise ShardError(f"{path}: member {m['name']} is missing or corrupt")
        out.append((str(m["name"]), data))
    return out
