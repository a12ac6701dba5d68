"""Denoise strength, the noise estimate, pipelines and the choice of tiles (in process, real images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models import imageio, noise
from models.config import deblock_config, denoise_config, sr_config
from models.engine import from_network, load_for_task
from models.errors import OptionError
from models.pipeline import restore_image, run_stages
from models.stages import AUTO, check_options, parse_pipeline, parse_strength
from models.tiling import choose_tile, count_tiles, redundancy, tile_grid
from tests.factories import random_net

CBSD68 = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "benchmarks" / "CBSD68"
needs_cbsd68 = pytest.mark.skipif(not CBSD68.is_dir(), reason="shared CBSD68 absent")
# every 8th photo: smooth skies, foliage, faces, fur
PHOTOS = sorted(CBSD68.glob("*.png"))[::8] if CBSD68.is_dir() else []


def _tiny(cfg, seed: int):  # type: ignore[no-untyped-def]
    return from_network(random_net(cfg, seed), cfg, backend="float")


def _photo(path: Path) -> imageio.Image:
    return imageio.read(str(path))


@needs_cbsd68
@pytest.mark.parametrize("sigma,low,high", [(0, 0.0, 4.0), (5, 3.5, 7.0), (15, 12.5, 17.5),
                                            (25, 21.0, 28.0), (50, 42.0, 55.0)])
def test_noise_estimate_on_photos(sigma: float, low: float, high: float) -> None:
    rng = np.random.default_rng(int(sigma))
    estimates = []
    for path in PHOTOS:
        clean = _photo(path).pixels
        noisy = clean + rng.normal(0, sigma / 255, clean.shape).astype(np.float32)
        estimates.append(noise.estimate_sigma(noisy))
    median = float(np.median(estimates))
    assert low <= median <= high, f"sigma {sigma}: estimates {np.round(estimates, 2)}"
    if sigma >= 15:  # every noisy photo gets the full network
        assert min(noise.auto_strength(e) for e in estimates) == 1.0, estimates


def test_auto_strength_ramp() -> None:
    assert noise.auto_strength(0.0) == 0.0 and noise.auto_strength(noise.SIGMA_CLEAN) == 0.0
    assert noise.auto_strength(noise.SIGMA_FULL) == 1.0 and noise.auto_strength(40.0) == 1.0
    mid = (noise.SIGMA_CLEAN + noise.SIGMA_FULL) / 2
    assert noise.auto_strength(mid) == pytest.approx(0.5)


def test_strength_zero_returns_the_input_and_half_blends() -> None:
    cfg = denoise_config(nf=8, depth=3)
    model = _tiny(cfg, 1)
    rng = np.random.default_rng(2)
    img = imageio.Image(pixels=rng.random((20, 24, 3), dtype=np.float32))
    assert restore_image(model, img, strength=0.0).pixels is img.pixels
    out, reports = run_stages([model], img, strength=0.0)
    assert np.array_equal(out.pixels, img.pixels) and reports[0].tiles == 0
    full = restore_image(model, img).pixels
    half = restore_image(model, img, strength=0.5).pixels
    np.testing.assert_allclose(half, img.pixels + 0.5 * (full - img.pixels), atol=1e-6)
    assert np.abs(full - img.pixels).max() > 0.01  # the network does change the image


def test_strength_needs_a_same_size_task() -> None:
    cfg = sr_config(2, "l", nf=8, depth=1)
    img = imageio.Image(pixels=np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="keeps the size"):
        restore_image(_tiny(cfg, 1), img, strength=0.5)


@needs_cbsd68
def test_auto_strength_leaves_a_clean_photo_and_denoises_a_noisy_one() -> None:
    model = _tiny(denoise_config(nf=8, depth=3), 3)
    clean = _photo(PHOTOS[1])  # a smooth photo (108082: estimate 0.3)
    crop = clean.with_pixels(clean.pixels[:128, :128].copy(), None)
    out, [report] = run_stages([model], crop)
    assert report.strength == 0.0 and report.sigma is not None and report.sigma < noise.SIGMA_CLEAN
    assert np.array_equal(out.pixels, crop.pixels)
    rng = np.random.default_rng(4)
    noisy_px = crop.pixels + rng.normal(0, 25 / 255, crop.pixels.shape).astype(np.float32)
    noisy = crop.with_pixels(noisy_px, None)
    out, [report] = run_stages([model], noisy, strength=AUTO)
    assert report.strength == 1.0 and 20 < report.sigma < 30  # type: ignore[operator]
    np.testing.assert_array_equal(out.pixels, restore_image(model, noisy).pixels)


@needs_cbsd68
def test_clean_photos_through_the_shipped_denoiser_stay_above_38_db() -> None:
    model = load_for_task("denoise")
    for path in sorted(CBSD68.glob("*.png")):  # all 68
        img = _photo(path)
        out, [report] = run_stages([model], img)
        got = np.rint(np.clip(out.pixels, 0, 1) * 255)
        mse = float(np.mean((got - np.rint(img.pixels * 255)) ** 2))
        psnr = float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)
        assert psnr >= 38.0, f"{path.name}: {psnr:.2f} dB at strength {report.strength}"


def test_pipeline_equals_the_stages_one_after_the_other() -> None:
    deblock = _tiny(deblock_config(nf=8, depth=3), 5)
    denoise = _tiny(denoise_config(nf=8, depth=3), 6)
    sr = _tiny(sr_config(2, "l", nf=8, depth=1), 7)
    rng = np.random.default_rng(8)
    img = imageio.Image(pixels=rng.random((37, 29, 3), dtype=np.float32), alpha=rng.random((37, 29),
                                                                                          dtype=np.float32))
    for first in (deblock, denoise):
        out, reports = run_stages([first, sr], img, tile=16, strength=1.0)
        step = restore_image(sr, restore_image(first, img, tile=16), tile=16)
        np.testing.assert_array_equal(out.pixels, step.pixels)
        np.testing.assert_array_equal(out.alpha, step.alpha)  # type: ignore[arg-type]
        assert out.pixels.shape == (74, 58, 3)
        assert [r.task for r in reports] == [first.config.task, "sr"]
        assert [r.tiles for r in reports] == [6, 6] and all(r.inference_ms > 0 for r in reports)
        assert reports[1].strength is None and reports[1].redundancy > 1.0


@pytest.mark.parametrize("text,tasks", [("denoise", ("denoise",)), ("deblock,sr", ("deblock", "sr")),
                                        (" Denoise , SR ", ("denoise", "sr"))])
def test_parse_pipeline(text: str, tasks: tuple[str, ...]) -> None:
    assert parse_pipeline(text) == tasks


@pytest.mark.parametrize("text,match", [("sr,deblock", "sr must come last"), ("denoise,denoise", "repeats"),
                                        ("blur", "unknown task 'blur'"), ("", "unknown task ''")])
def test_bad_pipelines(text: str, match: str) -> None:
    with pytest.raises(OptionError, match=match):
        parse_pipeline(text)


def test_parse_strength() -> None:
    assert parse_strength("auto") == AUTO and parse_strength("0.25") == 0.25 and parse_strength(None) is None
    for bad in ("1.5", "-0.1", "strong"):
        with pytest.raises(OptionError, match="strength"):
            parse_strength(bad)
    with pytest.raises(OptionError, match="denoise"):
        check_options(("deblock", "sr"), None, 0.5)
    with pytest.raises(OptionError, match="scale 0 is not supported"):
        check_options(("sr",), 0, None)
    with pytest.raises(OptionError, match="sr only"):
        check_options(("denoise",), 2, None)
    check_options(("denoise", "sr"), 3, AUTO)


@pytest.mark.parametrize("h,w,tile", [(480, 640, 320), (481, 641, 200), (37, 29, 16), (10, 10, 32)])
def test_balanced_grid_covers_the_image_and_redundancy_counts_overlap(h: int, w: int, tile: int) -> None:
    cover = np.zeros((h, w), np.int32)
    computed, radius = 0, 7
    for y0, y1, x0, x1 in tile_grid(h, w, tile):
        assert 0 < y1 - y0 <= tile and 0 < x1 - x0 <= tile
        cover[y0:y1, x0:x1] += 1
        computed += (min(y1 + radius, h) - max(y0 - radius, 0)) * (min(x1 + radius, w) - max(x0 - radius, 0))
    assert (cover == 1).all() and len(list(tile_grid(h, w, tile))) == count_tiles(h, w, tile)
    assert redundancy(h, w, tile, radius) == pytest.approx(computed / (h * w))


def test_choose_tile_whole_image_when_it_fits_else_bounded_overlap() -> None:
    assert choose_tile(480, 640, radius=38, bytes_per_pixel=1000, memory_bytes=10**9, min_tile=152) == 640
    side = choose_tile(3000, 4000, radius=20, bytes_per_pixel=1000, memory_bytes=10**8, min_tile=80)
    assert (side + 40) ** 2 * 1000 <= 10**8 and side >= 80
    assert choose_tile(3000, 4000, radius=38, bytes_per_pixel=10**4, memory_bytes=10**6, min_tile=152) == 152


def test_choose_tile_takes_less_memory_for_at_most_5_percent_more_overlap() -> None:
    # a 12 MP denoise (radius 20) with 2 GB: the 3x3 grid of 1000x1334 tiles (1040x1373 with their
    # overlap) has the least overlap that fits (1.047); the 4x6 grid of 750x667 tiles (790x707)
    # computes 4% more pixels in 40% of the memory
    budget = 2048 << 20
    assert choose_tile(3000, 4000, radius=20, bytes_per_pixel=1408, memory_bytes=budget, min_tile=80) == 750
    assert redundancy(3000, 4000, 1334, 20) == pytest.approx(1.047, abs=1e-3)
    assert redundancy(3000, 4000, 750, 20) == pytest.approx(1.092, abs=1e-3)
    assert 1040 * 1373 * 1408 <= budget and 790 * 707 < 0.4 * 1040 * 1373
    # with a budget too small for 1334 the choice is bounded by the budget again
    small = choose_tile(3000, 4000, radius=20, bytes_per_pixel=1408, memory_bytes=256 << 20, min_tile=80)
    assert (small + 40) ** 2 * 1408 <= 256 << 20 and small < 750


def test_default_tile_of_the_engine_keeps_the_overlap_small() -> None:
    for cfg in (sr_config(4, "l"), sr_config(2, "l"), denoise_config()):
        model = from_network(random_net(cfg, 0), cfg, backend="float")
        tile = model.tile_for(480, 640)
        r = model.info.receptive_radius
        assert tile >= 4 * r and model.redundancy(480, 640, tile) <= (1 + 2 * r / tile) ** 2
        # the default budget: 640x480 whole, or for SR x4 (3.4 GB whole) two 320x480 tiles
        assert (tile, model.redundancy(480, 640, tile)) == ((640, 1.0) if cfg.scale < 4 else (480, 1.11875))
