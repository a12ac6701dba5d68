"""Chains of binary units whose outputs feed the next unit directly (shared by the kernel backends).

In the known architectures a binary unit's output is often the very tensor the next binary unit
takes. A kernel backend can then compute the next unit's input signs in the producing unit's
epilogue and hand them over through a ``Link``; the consumer uses them only if it is given that
exact tensor, so links save work and never change results.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor, nn

from models.deploy import DeployUnit


class LinkedUnit(Protocol):
    cin: int
    channels: int
    shift: Tensor
    link_in: Link | None
    link_out: Link | None


class KernelUnit(nn.Module):
    """What the kernel units share: a DeployUnit's epilogue parameters as flat fp32 buffers and links.

    ``perm`` reorders the output channels (the bit-packed kernel writes BBCU-U sub-pixel-major).
    """

    alpha: Tensor
    pre: Tensor
    post: Tensor
    slope: Tensor
    shift: Tensor

    def __init__(self, unit: DeployUnit, perm: Tensor | None = None) -> None:
        super().__init__()
        self.upscale = r = int(unit.upscale)
        cout, cin = int(unit.wsign.shape[0]), int(unit.wsign.shape[1])
        self.cin, self.cout, self.channels = cin, cout, cout // (r * r)

        def flat(t: Tensor) -> Tensor:
            t = t.reshape(-1).expand(cout)
            return (t if perm is None else t[perm.to(t.device)]).float().contiguous()

        for name in ("alpha", "pre", "post", "slope"):
            self.register_buffer(name, flat(getattr(unit, name)))
        self.register_buffer("shift", unit.shift.reshape(-1).float().contiguous())
        self.link_in: Link | None = None
        self.link_out: Link | None = None

    def check_input(self, x: Tensor) -> tuple[int, int, int, int]:
        """(n, c, h, w) of an input this unit can take; ValueError otherwise."""
        n, cin, h, w = (int(s) for s in x.shape)
        if cin != self.cin:
            raise ValueError(f"expected {self.cin} input channels, got {cin}")
        return n, cin, h, w


class Link:
    """Hands the sign form of one unit's output to the next (valid only for that exact tensor).

    ``consumer`` is the next unit; its ``shift`` is read at each call, never kept, because moving the
    network to another device replaces the buffers.
    """

    def __init__(self, consumer: LinkedUnit) -> None:
        self.consumer = consumer
        self.tensor: Tensor | None = None
        self.act: Tensor | None = None
        self.nchw = 1  # memory format of the chain's input, given to the chain's output

    def take(self, x: Tensor) -> Tensor | None:
        act = self.act if self.tensor is x else None
        self.tensor = self.act = None
        return act




def chain_names(net: nn.Module) -> list[str]:
    """The units of a registered family that may be linked, in execution order; [] for others."""
    from models import archs

    arch = archs.for_network(net)
    if arch is None:
        return []
    return [name for name, m in net.named_modules()
            if isinstance(m, DeployUnit) and name not in arch.unchained]


def replace_units(net: nn.Module, make: type[nn.Module]) -> list[tuple[str, nn.Module]]:
    """Replace (in place) each DeployUnit by ``make(unit)``; a ValueError keeps the deploy unit."""
    replaced: list[tuple[str, nn.Module]] = []
    for parent_name, parent in list(net.named_modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, DeployUnit):
                continue
            try:
                unit = make(child)
            except ValueError:
                continue
            setattr(parent, name, unit)
            replaced.append((f"{parent_name}.{name}" if parent_name else name, unit))
    return replaced


def link_chain(chain: list[str], units: dict[str, LinkedUnit]) -> None:
    """Link units adjacent in the chain (module order is execution order for the known archs)."""
    for a_name, b_name in zip(chain, chain[1:], strict=False):
        a, b = units.get(a_name), units.get(b_name)
        if a is not None and b is not None and a.channels == b.cin:
            link = Link(b)
            a.link_out, b.link_in = link, link
