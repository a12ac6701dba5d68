"""Engine vs the paper-style float simulation (issue 2), on identical weights in one run."""

from __future__ import annotations

import torch

from benchmarks.paper_reference import paper_network
from benchmarks.timing import median_seconds
from models import archs
from models.config import NetworkConfig, deblock_config, denoise_config, sr_config
from models.engine import from_network

CASES: list[tuple[str, NetworkConfig, tuple[int, int]]] = [
    ("denoise (DnCNN-20)", denoise_config(), (320, 480)),
    ("deblock (DnCNN-20, gray)", deblock_config(), (320, 480)),
    ("BBCU-M x4", sr_config(4, "m"), (180, 320)),
    ("BBCU-L x4", sr_config(4, "l"), (180, 320)),
]


def _network(config: NetworkConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    net = archs.build(config).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # shifts and biases away from zero so that every sign pattern occurs
        for name, p in net.named_parameters():
            if "bias" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net


def run(repeats: int = 3) -> str:
    torch.set_num_threads(2)
    lines = ["| network | input | paper-style float sim (s) | engine float (s) | ratio "
             "| engine auto (s) | backend | ratio | max abs diff |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, cfg, (h, w) in CASES:
        net = _network(cfg)
        x = torch.rand(1, cfg.in_nc, h, w, generator=torch.Generator().manual_seed(1))
        paper = paper_network(net)
        with torch.no_grad():
            ref = paper(x)
            t_paper = median_seconds(lambda: paper(x), repeats)  # noqa: B023
        flt = from_network(net, cfg, backend="float")
        auto = from_network(net, cfg, backend="auto")
        t_float = median_seconds(lambda: flt(x), repeats)  # noqa: B023
        t_auto = median_seconds(lambda: auto(x), repeats)  # noqa: B023
        diff = max((flt(x) - ref).abs().max().item(), (auto(x) - ref).abs().max().item())
        lines.append(f"| {label} | {w}x{h} | {t_paper:.2f} | {t_float:.2f} | {t_paper / t_float:.1f}x "
                     f"| {t_auto:.2f} | {auto.backend} | {t_paper / t_auto:.1f}x | {diff:.1e} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
