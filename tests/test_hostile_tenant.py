"""Issue 19: what one hostile tenant tried against the others, each attack reproduced, then refused.

Each test sends what the issue's attacker sent (or the closest local equivalent) and asserts the
answer that keeps the other tenants served: a clear 4xx, never a 500, and nothing shared held.
"""

from __future__ import annotations

import io

import pytest
from PIL import Image

from models import imageio, input_formats
from models.errors import ImageDecodeError
from tests.conftest import Service
from tests.helpers import assert_problem


def _saved(fmt: str, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (8, 8), 0).save(buf, format=fmt)
    return buf.getvalue()


# --- item 10: decoding limited to the documented formats


@pytest.mark.parametrize("fmt", ["PCX", "TGA", "ICO", "PPM", "SGI"])
def test_formats_outside_the_list_are_not_parsed(fmt: str) -> None:
    data = _saved(fmt)
    with Image.open(io.BytesIO(data)) as im:  # the attack: Pillow alone parses it
        assert im.format == fmt and fmt not in input_formats.INPUT_FORMATS
    with pytest.raises(ImageDecodeError, match="none of the accepted formats"):
        imageio.probe(data, max_pixels=1 << 20)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_the_listed_formats_decode(fmt: str) -> None:
    data = _saved(fmt, "P" if fmt == "GIF" else "RGB")
    assert imageio.probe(data, max_pixels=1 << 20) == (8, 8, fmt)


def test_an_unlisted_format_is_415_over_http(service: Service) -> None:
    with service.client() as c:
        r = c.post("/restore", params={"task": "denoise"},
                   files={"image": ("x.pcx", _saved("PCX"), "image/x-pcx")})
    body = assert_problem(r, 415)
    assert input_formats.described() in body["detail"] and body["type"] == "urn:bbcu:problem:not-an-image"
