"""Training of BBCU networks (Xia et al., ICLR 2023): STE gradients, data pipeline, loop, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from models import checkpoints
from models.blocks import binary_conv_ste, sign_ste
from models.train import data
from models.train.loop import TrainConfig, init_from, lr_at, recipe, train


def _paper_sign(a: torch.Tensor) -> torch.Tensor:
    """The paper-style activation chain: sign forward, piecewise-quadratic surrogate backward."""
    f = torch.where(a < -1, -torch.ones_like(a),
                    torch.where(a < 0, a * a + 2 * a, torch.where(a < 1, -a * a + 2 * a, torch.ones_like(a))))
    return torch.sign(a).detach() - f.detach() + f


def test_sign_ste_matches_autograd_of_definition() -> None:
    a = (torch.randn(4, 8, 5, 5) * 0.8).requires_grad_()
    b = a.detach().clone().requires_grad_()
    g = torch.randn_like(a)
    out = sign_ste(a)
    ref = _paper_sign(b)
    torch.testing.assert_close(out, torch.sign(a.detach()))
    torch.testing.assert_close(ref, torch.sign(b.detach()))
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(a.grad, b.grad)
    assert (a.grad[a.abs() > 1] == 0).all()


def test_binary_conv_ste_matches_autograd_of_definition() -> None:
    """Forward = conv with alpha * sign(W); gradient to W as if the weights were clamp(W, -1, 1)."""
    w = (torch.randn(6, 4, 3, 3) * 0.9).requires_grad_()
    v = w.detach().clone().requires_grad_()
    s = torch.sign(torch.randn(2, 4, 7, 5)).requires_grad_()
    t = s.detach().clone().requires_grad_()
    g = torch.randn(2, 6, 7, 5)
    alpha = v.detach().abs().mean(dim=(1, 2, 3), keepdim=True)
    f = torch.clamp(v, -1, 1)
    ref = F.conv2d(t, (alpha * torch.sign(v)).detach() - f.detach() + f, padding=1)
    out = binary_conv_ste(s, w)
    torch.testing.assert_close(out, ref)
    # the forward is the exact integer count times alpha, as the inference engine computes it
    counts = F.conv2d(s.detach(), torch.sign(w.detach()), padding=1)
    exact_alpha = w.detach().double().abs().mean(dim=(1, 2, 3)).float()  # one rounding
    assert torch.equal(out.detach(), counts * exact_alpha.view(1, -1, 1, 1))
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(w.grad, v.grad)
    torch.testing.assert_close(s.grad, t.grad)


def _images(folder: Path, n: int = 4, size: tuple[int, int] = (72, 80)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size[0], 0:size[1]]
    for i in range(n):
        base = 127 + 100 * np.sin(xx / (3 + i)) * np.cos(yy / (4 + i))
        img = np.clip(base[..., None] + rng.normal(0, 5, (*size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"im{i}.png")
    return folder


def test_dihedral_modes_are_the_eight_symmetries() -> None:
    a = np.arange(12).reshape(3, 4)
    outs = {data.dihedral(a, m).tobytes() + bytes(data.dihedral(a, m).shape) for m in range(8)}
    assert len(outs) == 8
    np.testing.assert_array_equal(data.dihedral(a, 0), a)
    np.testing.assert_array_equal(data.dihedral(a, 1), np.rot90(a))
    np.testing.assert_array_equal(data.dihedral(a, 4), a[:, ::-1])
    with pytest.raises(ValueError):
        data.dihedral(a, 8)


def test_patch_sampler_skips_flat_patches_and_degrades() -> None:
    flat = np.full((64, 64, 3), 100, np.uint8)
    textured = flat.copy()
    textured[:, 32:] = np.random.default_rng(0).integers(0, 256, (64, 32, 3))
    spec = data.DegradeSpec("denoise", 16, min_gradient=5.0, tries=50)
    sampler = data.PatchSampler([textured], spec, seed=1)
    grads = [data.patch_gradient(sampler.crop()) for _ in range(20)]
    assert min(grads) >= 5.0
    lq, gt = sampler.sample(4)
    assert lq.shape == gt.shape == (4, 3, 16, 16)
    assert lq.min() < 0 or lq.max() > 1 or not torch.equal(lq, gt)  # noisy, unclipped
    sr = data.PatchSampler([textured], data.DegradeSpec("sr", 24, 3, min_gradient=0), seed=0)
    lq, gt = sr.sample(2)
    assert lq.shape == (2, 3, 8, 8) and gt.shape == (2, 3, 24, 24)
    assert torch.equal((lq * 255).round(), lq * 255)  # LR rounded to 8 bits like a saved PNG
    db = data.PatchSampler([textured], data.DegradeSpec("deblock", 16, min_gradient=0), seed=0)
    lq, gt = db.sample(3)
    assert lq.shape == gt.shape == (3, 1, 16, 16)
    with pytest.raises(ValueError):
        data.DegradeSpec("sr", 25, 2)


def test_sr_degradation_is_matlab_bicubic() -> None:
    from models.degrade import imresize

    hr = np.random.default_rng(4).integers(0, 256, (24, 24, 3)).astype(np.uint8)
    lq, gt = data.degrade(hr, data.DegradeSpec("sr", 24, 2), np.random.default_rng(0))
    want = np.clip(np.round(imresize(hr / 255.0, size=(12, 12)) * 255), 0, 255) / 255
    np.testing.assert_allclose(lq, want, atol=1e-6)
    np.testing.assert_allclose(gt, hr / 255.0, atol=1e-6)


def test_noise_sigma_range_and_jpeg_quality_range() -> None:
    hr = np.full((32, 32, 3), 128, np.uint8)
    rng = np.random.default_rng(0)
    stds = [float((data.degrade(hr, data.DegradeSpec("denoise", 32), rng)[0] - 128 / 255).std() * 255)
            for _ in range(60)]
    assert 0 <= min(stds) < 15 and 60 < max(stds) < 78
    lq, gt = data.degrade(hr, data.DegradeSpec("deblock", 32), rng)
    assert lq.shape == gt.shape == (32, 32, 1)


def test_holdout_split_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    files = [tmp_path / f"{i}.png" for i in range(10)]
    train_a, held_a = data.split_holdout(files, 2)
    train_b, held_b = data.split_holdout(list(reversed(files)), 2)
    assert held_a == held_b and len(held_a) == 2
    assert not set(train_a) & set(held_a) and len(train_a) == 8


def test_lr_schedule_and_recipe() -> None:
    cfg = TrainConfig(task="sr", data=("x",), lr=1e-4, milestones=(10, 20))
    assert [lr_at(cfg, i) for i in (0, 9, 10, 19, 20)] == [1e-4, 1e-4, 5e-5, 5e-5, 2.5e-5]
    assert recipe("sr", 2)["patch"] == 128 and recipe("denoise")["batch"] == 32
    with pytest.raises(ValueError):
        recipe("colorize")


def _cfg(folder: Path, run: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = dict(task="denoise", data=(str(folder),), nf=8, depth=4, iters=30, batch=4,
                                   patch=24, lr=2e-3, milestones=(1000,), val_every=10, val_images=1,
                                   save_every=5, threads=1, run_dir=str(run), min_gradient=0.0)
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_tiny_training_lowers_loss_and_writes_weights(tmp_path: Path) -> None:
    folder = _images(tmp_path / "imgs")
    cfg = _cfg(folder, tmp_path / "run", out=str(tmp_path / "w.safetensors"))
    res = train(cfg, log=lambda _: None, progress=False)
    assert res.iterations == 30 and res.weights is not None
    vals = [v for _, v in res.val_psnr]
    assert len(vals) == 3 and vals[-1] > vals[0]
    ckpt = checkpoints.read(res.weights)
    assert ckpt.config.task == "denoise" and ckpt.config.nf == 8
    meta = ckpt.metadata["training"]
    assert meta["iterations"] == 30 and len(meta["data_manifest_sha256"]) == 64
    assert "provenance" in ckpt.metadata


def test_resume_continues_identically(tmp_path: Path) -> None:
    folder = _images(tmp_path / "imgs")
    full = train(_cfg(folder, tmp_path / "a", iters=10), log=lambda _: None, progress=False)
    train(_cfg(folder, tmp_path / "b", iters=5), log=lambda _: None, progress=False)
    resumed = train(_cfg(folder, tmp_path / "b", iters=10), resume=True, log=lambda _: None, progress=False)
    assert resumed.iterations == 10
    a = torch.load(full.state, weights_only=True)["net"]
    b = torch.load(resumed.state, weights_only=True)["net"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_init_from_x2_copies_body_and_head(tmp_path: Path) -> None:
    from models import archs
    from models.config import sr_config

    x2 = archs.build(sr_config(2, nf=8, depth=2))
    path = checkpoints.save(tmp_path / "x2.safetensors", x2, sr_config(2, nf=8, depth=2))
    x4 = archs.build(sr_config(4, nf=8, depth=2))
    copied, skipped = init_from(x4, path)
    assert "conv_first.weight" in copied and "body.1.body.1.binary_conv.weight" in copied
    assert "upconv2.weight" in skipped
    torch.testing.assert_close(x4.state_dict()["body.0.body.0.move0.bias"],
                               x2.state_dict()["body.0.body.0.move0.bias"])


def test_cli_train_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    assert main(["train", "--task", "sr", "--data", str(tmp_path / "missing")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["train", "--task", "denoise", "--scale", "2", "--data", str(tmp_path)]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--task", "denoise", "--data", str(empty), "--run-dir", str(tmp_path / "r")]) == 2
    assert "no images" in capsys.readouterr().err
