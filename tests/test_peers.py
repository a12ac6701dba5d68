"""`make bench peers`: the float peers are the published networks, run alike in onnxruntime and torch,
and the report has a row for every comparison (tiny inputs: no time is asserted)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks import peers
from benchmarks.peer_nets import IMDN, DnCNN, EDSRBaseline, FFDNet, param_count
from benchmarks.timing import Timing, cpu_model

SR_SIZE = (16, 12)
SIZE = (32, 24)


def _convs(net: nn.Module) -> list[nn.Conv2d]:
    return [m for m in net.modules() if isinstance(m, nn.Conv2d)]


def test_peer_networks_have_the_published_size() -> None:
    # the papers give IMDN 715K and EDSR-baseline 1.5M parameters (x4)
    assert round(param_count(IMDN(scale=4)) / 1e3) == 715
    assert round(param_count(EDSRBaseline(scale=4)) / 1e5) == 15
    # FFDNet (color): 12 layers of 96 channels on 4 x 3 shuffled pixels + 3 noise-level planes
    ffdnet = _convs(FFDNet())
    assert len(ffdnet) == 12 and ffdnet[0].in_channels == 15 and ffdnet[-1].out_channels == 12
    assert {c.out_channels for c in ffdnet[:-1]} == {96}
    dncnn = _convs(DnCNN())
    assert len(dncnn) == 17 and {c.out_channels for c in dncnn[:-1]} == {64}
    with pytest.raises(ValueError, match="power-of-two"):
        EDSRBaseline(scale=3)


@pytest.mark.parametrize("name", list(peers.PEERS))
def test_peer_runs_alike_in_onnxruntime_and_torch(name: str) -> None:
    peer = peers.PEERS[name]
    w, h = SR_SIZE if peer.sr else SIZE
    runners = peers.peer_runners(peer, (w, h))
    assert set(runners) == set(peers.RUNTIMES)
    outputs = runners["onnxruntime"]()
    assert isinstance(outputs, list) and len(outputs) == 1
    from_onnx = outputs[0]
    from_torch = runners["torch"]()
    assert isinstance(from_torch, torch.Tensor)
    scale = 4 if peer.sr else 1
    assert from_onnx.shape == tuple(from_torch.shape) == (1, 3, h * scale, w * scale)
    assert float(from_torch.abs().max()) > 0
    np.testing.assert_allclose(from_onnx, from_torch.numpy(), rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def measured() -> dict[str, Timing]:
    return peers.measure(list(peers.ROWS), repeats=1, sr_size=SR_SIZE, size=SIZE)


def test_measure_times_every_contender_once(measured: dict[str, Timing]) -> None:
    want = {r.ours for r in peers.ROWS} | {f"{r.peer}/{rt}" for r in peers.ROWS for rt in peers.RUNTIMES}
    assert set(measured) == want
    assert all(t.wall > 0 and t.cpu >= 0 for t in measured.values())


def test_report_has_a_row_per_comparison(measured: dict[str, Timing]) -> None:
    table = peers.report(list(peers.ROWS), measured, repeats=1, sr_size=SR_SIZE, size=SIZE)
    assert table.startswith(f"CPU: {cpu_model()}, 2 threads")
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| task")]
    assert len(rows) == len(peers.ROWS)
    for row, line in zip(peers.ROWS, rows, strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        ours, peer = peers.OURS[row.ours], peers.PEERS[row.peer]
        size = SR_SIZE if ours.task == "sr" else SIZE
        assert cells[0] == f"{row.task} ({size[0]}x{size[1]})"
        assert cells[1] == ours.name and cells[4] == peer.name
        assert cells[2] == peers.ours_quality(ours) and re.fullmatch(r".+ \d\d\.\d\d", cells[2])
        assert cells[5].startswith(peer.quality)
        ours_ms = float(cells[3])
        best_ms, ort_ms, torch_ms = map(float, re.fullmatch(r"(\d+) \((\d+) / (\d+)\)", cells[6]).groups())  # type: ignore[union-attr]
        assert best_ms == min(ort_ms, torch_ms)
        assert ours_ms == round(measured[row.ours].wall * 1e3)
        best = min(measured[f"{row.peer}/{rt}"].wall for rt in peers.RUNTIMES)
        assert cells[7] == f"{best / measured[row.ours].wall:.2f}x"
    for i, peer in enumerate(peers.PEERS.values(), 1):
        assert f"[{i}] {peer.name}: {peer.source}." in table


def test_cli_rejects_a_bad_size(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        peers.main(["--size", "33x24"])
    assert exc.value.code == 2
    assert "must be even" in capsys.readouterr().err


def test_the_deblock_inputs_are_jpeg_files_decoded_like_uploads() -> None:
    from models import chroma
    from models.jpeg_info import JpegInfo

    q10, q30, q75 = (peers._input(peers.OURS[k], (64, 48)) for k in ("deblock", "deblock-q30", "deblock-q75"))
    assert q10.jpeg == JpegInfo(10, (2, 2)) and q30.jpeg == JpegInfo(30, (2, 2))
    assert q75.jpeg == JpegInfo(75, (2, 2))
    assert chroma.scale_for(q10.jpeg) == chroma.QUARTER and chroma.scale_for(q30.jpeg) == chroma.HALF
    assert chroma.color_alone(q75.jpeg) and not chroma.color_alone(q30.jpeg)
    assert np.abs(q10.pixels - q30.pixels).mean() > 1e-3  # different compressions
    assert peers._input(peers.OURS["denoise"], (64, 48)).jpeg is None


def test_interleaved_rounds_rotate_the_order() -> None:
    from benchmarks.timing import interleaved

    seen: list[str] = []
    fns = {k: (lambda k=k: seen.append(k)) for k in "abc"}
    times = interleaved(fns, repeats=3)  # type: ignore[arg-type]
    assert seen == list("abc") + list("abc") + list("bca") + list("cab")
    assert set(times) == set("abc") and all(t.wall >= 0 and t.cpu >= 0 for t in times.values())
