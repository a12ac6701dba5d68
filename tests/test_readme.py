"""The README stays a front page: under 15 KB (details live in docs/), and every file it links exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_BYTES = 15_000


def test_readme_is_under_15_kb() -> None:
    size = len(README.read_bytes())
    assert size < MAX_BYTES, f"README.md is {size} bytes: move details to docs/ (issue 21)"


def test_readme_links_to_files_that_exist() -> None:
    targets = re.findall(r"\]\(((?!https?:|#|mailto:)[^)#\s]+)(?:#[^)]*)?\)", README.read_text())
    assert "docs/soak.md" in targets and "docs/service.md" in targets
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert not missing, missing
