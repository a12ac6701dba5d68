"""Networks, checkpoints and the inference engine: formats, detection, parity, tiling, info."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models import checkpoints, load_model
from models.complexity import count
from models.config import NetworkConfig, denoise_config, sr_config
from models.engine import from_network
from models.errors import CheckpointMismatchError, CheckpointReadError, UnsupportedCheckpointError
from models.hashing import sha256_file
from tests.factories import random_net, save_official, save_ours, small_configs
from tests.helpers import missing

CONFIGS = small_configs()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_official_round_trip_detects_config_and_matches(tmp_path: Path, name: str) -> None:
    cfg = CONFIGS[name]
    path, net = save_official(tmp_path, cfg)
    ckpt = checkpoints.read(path)
    assert ckpt.config == cfg
    model = load_model(path, backend="float")
    x = torch.rand(1, cfg.in_nc, 19, 13, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = net(x)
    out = model(x)
    assert out.shape == (1, cfg.out_nc, 19 * cfg.scale, 13 * cfg.scale)
    assert (out - ref).abs().max().item() <= 1e-5
    assert model.info.task == cfg.task and model.info.scale == cfg.scale
    assert model.info.variant == cfg.variant
    assert model.info.sha256 == sha256_file(path)


@pytest.mark.parametrize("key,prefix", [("params_ema", ""), ("params", "module."), ("state_dict", "module.")])
def test_basicsr_wrappers_and_dataparallel_prefix(tmp_path: Path, key: str, prefix: str) -> None:
    cfg = sr_config(3, "m", nf=8, depth=2)
    path, _ = save_official(tmp_path, cfg, key=key, prefix=prefix)
    assert checkpoints.read(path).config == cfg


def test_params_ema_preferred_over_params(tmp_path: Path) -> None:
    cfg = sr_config(2, "l", nf=8, depth=1)
    a, b = random_net(cfg, 1).state_dict(), random_net(cfg, 2).state_dict()
    torch.save({"params": a, "params_ema": b}, tmp_path / "both.pth")
    sd = checkpoints.read(tmp_path / "both.pth").state_dict
    assert torch.equal(sd["conv_first.weight"], b["conv_first.weight"])


@pytest.mark.parametrize("name", ["sr-l-x4", "sr-m-x4", "denoise", "deblock"])
def test_engine_matches_training_forward_at_paper_width(name: str) -> None:
    small = CONFIGS[name]
    cfg = NetworkConfig.from_dict({**small.to_dict(), "nf": 64, "k": 130.0})
    net = random_net(cfg, seed=3)
    x = torch.rand(2, cfg.in_nc, 24, 20, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = net(x)
    out = from_network(net, cfg, backend="float")(x)
    assert (out - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("backend", ["float", "auto"])
def test_engine_is_bitwise_the_training_forward_in_the_same_layout(name: str, backend: str) -> None:
    """Training-mode units compute the deploy arithmetic (scaled exact counts, same order)."""
    small = CONFIGS[name]
    cfg = NetworkConfig.from_dict({**small.to_dict(), "nf": 64, "k": 130.0})
    net = random_net(cfg, seed=7).to(memory_format=torch.channels_last)
    x = torch.rand(1, cfg.in_nc, 61, 47, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        ref = net(x.contiguous(memory_format=torch.channels_last))
    out = from_network(net, cfg, backend=backend)(x)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("name", ["sr-l-x2", "sr-m-x3", "sr-l-x4", "denoise", "deblock", "sr-all-x2"])
def test_tiled_equals_whole(name: str) -> None:
    cfg = CONFIGS[name]
    model = from_network(random_net(cfg, 5), cfg, backend="float")
    x = torch.rand(1, cfg.in_nc, 53, 41, generator=torch.Generator().manual_seed(6))
    whole = model.restore(x)
    seen: list[tuple[int, int]] = []
    tiled = model.restore(x, tile=16, progress=lambda d, t: seen.append((d, t)))
    assert tiled.shape == whole.shape
    assert (tiled - whole).abs().max().item() <= 1e-5
    assert seen[-1] == (12, 12) and len(seen) == 12  # 4 x 3 tiles


def test_batched_tiles_equal_one_by_one() -> None:
    from models.tiling import run_tiled

    cfg = CONFIGS["denoise"]  # receptive radius 5
    model = from_network(random_net(cfg, 5), cfg, backend="float")
    x = torch.rand(2, cfg.in_nc, 80, 96, generator=torch.Generator().manual_seed(6))
    radius, cpu = model.info.receptive_radius, torch.device("cpu")
    calls: list[int] = []

    def net(t: torch.Tensor) -> torch.Tensor:
        calls.append(t.shape[0])
        return model(t)

    one = run_tiled(net, x, scale=1, radius=radius, tile=16, device=cpu)
    assert calls == [2] * 30  # 5 x 6 tiles, two images each
    calls.clear()
    seen: list[tuple[int, int]] = []
    batched = run_tiled(net, x, scale=1, radius=radius, tile=16, device=cpu, batch=3,
                        progress=lambda d, t: seen.append((d, t)))
    # padded shapes: 26x26 (12 tiles), 26x21 (6), 21x26 (8), 21x21 (4): 4 + 2 + 3 + 2 batches of <= 3
    assert len(calls) == 11 and max(calls) == 6 and sum(calls) == 60
    assert seen[-1] == (30, 30)
    assert torch.equal(batched, one)


def test_radius_is_needed_tiles_without_overlap_differ() -> None:
    cfg = CONFIGS["denoise"]
    model = from_network(random_net(cfg, 5), cfg, backend="float")
    x = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(6))
    from models.tiling import run_tiled

    naive = run_tiled(model, x, scale=1, radius=0, tile=16, device=torch.device("cpu"))
    assert (naive - model.restore(x)).abs().max().item() > 1e-3


def test_paper_counts_for_released_networks() -> None:
    l4, m4 = count(sr_config(4, "l")), count(sr_config(4, "m"))
    assert round(l4.params_paper / 1e3) == 373 and round(l4.ops_paper / 1e9, 1) == 79.2
    assert round(m4.params_paper / 1e3) == 51 and round(m4.ops_paper / 1e9, 2) == 3.95
    dn = count(denoise_config(), 320, 480)
    assert dn.bops == 18 * 64 * 64 * 9 * 320 * 480
    assert dn.flops == 2 * 3 * 64 * 9 * 320 * 480


def test_info_reports_counts_ops_and_checksum(tmp_path: Path) -> None:
    cfg = sr_config(4, "m")
    path = save_ours(tmp_path, "m4", cfg)
    model = load_model(path, backend="float")
    info = model.info
    assert info.binary_params == 1511424 and info.variant == "m"
    assert info.ops(180, 320)["ops_paper"] == pytest.approx(3.948e9, rel=1e-3)
    assert len(info.sha256) == 64 and info.backend in ("float", "bitpacked")
    d = info.as_dict()
    json.dumps(d)
    assert d["metadata"]["provenance"] == "random init for tests"


def test_safetensors_metadata_round_trip(tmp_path: Path) -> None:
    cfg = sr_config(2, "head+body+up+tail", nf=8, depth=1)
    path = save_ours(tmp_path, "custom", cfg)
    ckpt = checkpoints.read(path)
    assert ckpt.config == cfg and ckpt.format == "safetensors"
    assert ckpt.metadata["config"]["binary"] == ["body", "head", "tail", "up"]


def test_corrupt_and_foreign_checkpoints_get_typed_errors(tmp_path: Path) -> None:
    (tmp_path / "junk.pth").write_bytes(b"\x00not a checkpoint")
    with pytest.raises(CheckpointReadError, match="junk.pth"):
        checkpoints.read(tmp_path / "junk.pth")
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(UnsupportedCheckpointError, match="not a BBCU network.*fc.weight"):
        checkpoints.read(tmp_path / "other.pth")
    torch.save({"params": {"a": 1}}, tmp_path / "nontensor.pth")
    with pytest.raises(UnsupportedCheckpointError, match="not"):
        checkpoints.read(tmp_path / "nontensor.pth")
    with pytest.raises(CheckpointReadError, match="no such file"):
        checkpoints.read(tmp_path / "missing.pth")


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    import argparse

    torch.save({"params": argparse.Namespace(a=1)}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointReadError, match="refused"):
        checkpoints.read(tmp_path / "evil.pth")


def test_shape_mismatch_is_a_typed_error(tmp_path: Path) -> None:
    cfg = denoise_config(nf=8, depth=4)
    sd = random_net(cfg).state_dict()
    sd["model.3.binary_conv.weight"] = torch.zeros(8, 4, 3, 3)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatchError, match="do not fit"):
        checkpoints.build_network(checkpoints.read(tmp_path / "bad.pth"))


def test_truncated_checkpoint(tmp_path: Path) -> None:
    path, _ = save_official(tmp_path, CONFIGS["deblock"])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointReadError):
        checkpoints.read(path)


def test_wrong_input_shape_is_rejected() -> None:
    cfg = CONFIGS["deblock"]
    model = from_network(random_net(cfg), cfg, backend="float")
    with pytest.raises(ValueError, match="N x 1 x H x W"):
        model(torch.rand(1, 3, 8, 8))


def test_bf16_is_opt_in_close_to_fp32_and_refused_where_it_cannot_run() -> None:
    from models.engine import bf16_supported

    cfg = CONFIGS["sr-l-x2"]
    net = random_net(cfg, seed=3)
    x = torch.rand(1, cfg.in_nc, 24, 20, generator=torch.Generator().manual_seed(2))
    exact = from_network(net, cfg)
    assert exact.info.precision == "fp32"
    with pytest.raises(ValueError, match="unknown precision"):
        from_network(net, cfg, precision="fp8")
    if not bf16_supported():
        with pytest.raises(ValueError, match="needs a CPU with bf16 instructions"):
            from_network(net, cfg, precision="bf16")
        return
    low = from_network(net, cfg, precision="bf16")
    assert low.info.precision == "bf16"
    a, b = exact(x), low(x)
    assert b.dtype == torch.float32 and b.shape == a.shape
    assert 0 < (a - b).abs().max().item() < 0.1  # bf16 rounding (8-bit mantissa) in the float layers
    assert torch.equal(exact(x), a)  # the fp32 model is untouched by the other's autocast


def test_the_cpu_kernels_tile_by_their_own_memory_model() -> None:
    """The bit-packed chain works in place: a 1080p photo fits the default budget as one tile, which
    the float backend's five feature maps would not."""
    from models import kernels
    from models.engine import bf16_supported, load_for_task

    if not kernels.available():
        missing(kernels.unavailable_reason())
    kernels_model = load_for_task("deblock", backend="bitpacked")
    float_model = load_for_task("deblock", backend="float")
    assert kernels_model.bytes_per_pixel == pytest.approx(4 * 64 * 2.2)
    assert float_model.bytes_per_pixel == pytest.approx(4 * 64 * 5.5)
    assert kernels_model.tile_for(1080, 1920) >= 1920 > float_model.tile_for(1080, 1920)
    if bf16_supported():  # the bf16 path runs float modules: the float backend's memory model
        assert load_for_task("deblock", backend="bitpacked", precision="bf16").bytes_per_pixel == \
            float_model.bytes_per_pixel
