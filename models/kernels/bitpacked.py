"""Bit-packed deploy units: ``BitUnit`` replaces a ``DeployUnit`` and runs the C kernel.

A unit's output is an NHWC (``channels_last``) float tensor; when the next binary unit of a
known chain consumes that very tensor, the kernel has already packed ``sign(out + next.shift)``
in its epilogue and the next unit uses those bits directly (a *link*). A unit whose input was not
produced by its linked predecessor packs its input itself, so links only save work: results never
depend on them. The last unit of a chain returns a tensor in the memory format the chain's first
unit was given (NCHW or channels_last), as the float deploy units would, so that the float
convolutions that follow pick the same algorithm in both engines. Inside a chain, a unit whose
input is the previous unit's output writes its own output in place over it (nothing else holds
the intermediate tensors of the known architectures).

Every float operation of the epilogue follows ``models.deploy.DeployUnit`` one rounding at a time,
so the outputs are bitwise equal to the float engine's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.deploy import DeployUnit
from models.kernels import _bitpacked as _ext  # type: ignore[attr-defined]

GROUP = 16


def _ptr(t: Tensor | None) -> int:
    return 0 if t is None else int(t.data_ptr())


def _words(channels: int) -> int:
    return (channels + 63) // 64


def pack_weights(wsign: Tensor) -> tuple[Tensor, int]:
    """Pack the sign bits of a (Cout, Cin, 3, 3) tensor; returns (packed, number of zero weights)."""
    cout, cin = int(wsign.shape[0]), int(wsign.shape[1])
    w = wsign.detach().to(torch.float32).contiguous()
    ng = (cout + GROUP - 1) // GROUP
    out = torch.empty(ng * 9 * _words(cin) * GROUP, dtype=torch.int64)
    zeros = _ext.pack_weights(_ptr(w), cout, cin, _ptr(out))
    return out, int(zeros)


def pack_activations(x: Tensor, shift: Tensor) -> Tensor:
    """sign(x + shift) of an NCHW float tensor as [N][H+2][W+2][K][2] words (zero border)."""
    n, c, h, w = (int(s) for s in x.shape)
    xc = x.contiguous(memory_format=torch.channels_last)
    act = torch.empty((n, h + 2, w + 2, 2 * _words(c)), dtype=torch.int64)
    _ext.pack_act(_ptr(xc), n, h, w, c, _ptr(shift), _ptr(act), torch.get_num_threads(), 0)
    return act


def binary_counts(x: Tensor, shift: Tensor, wsign: Tensor) -> Tensor:
    """conv2d(sign(x + shift), sign(W), padding=1) as exact int32 counts (NCHW), via the kernel."""
    n, cin, h, w = (int(s) for s in x.shape)
    cout = int(wsign.shape[0])
    wp, zeros = pack_weights(wsign)
    if zeros:
        raise ValueError("weights with exact zeros cannot be bit-packed")
    act = pack_activations(x, shift)
    counts = torch.empty((n, h, w, cout), dtype=torch.int32)
    _ext.unit(_ptr(act), n, h, w, cin, _ptr(wp), cout, 1, 0, 0, 0, 0, 0, 0, 0, 0, _ptr(counts),
              torch.get_num_threads(), 0, 0)
    return counts.permute(0, 3, 1, 2)


class Link:
    """Hands the packed output of one unit to the next (valid only for that exact tensor)."""

    def __init__(self) -> None:
        self.tensor: Tensor | None = None
        self.act: Tensor | None = None
        self.nchw = 1  # memory format of the chain's input, given to the chain's output

    def take(self, x: Tensor) -> Tensor | None:
        act = self.act if self.tensor is x else None
        self.tensor = self.act = None
        return act


class BitUnit(nn.Module):
    """A BBCU (or BBCU-U) unit computed by the bit-packed kernel; same math as ``DeployUnit``."""

    wpacked: Tensor
    alpha: Tensor
    pre: Tensor
    post: Tensor
    slope: Tensor
    shift: Tensor

    def __init__(self, unit: DeployUnit, packed: Tensor | None = None) -> None:
        super().__init__()
        self.upscale = r = int(unit.upscale)
        wsign = unit.wsign
        cout, cin = int(wsign.shape[0]), int(wsign.shape[1])
        c = cout // (r * r)
        # sub-pixel-major output order for BBCU-U: o' = (i*r + j)*C + c  <-  o = c*r*r + i*r + j
        perm = torch.arange(cout).view(c, r * r).t().reshape(-1)
        if packed is None:
            packed, zeros = pack_weights(wsign[perm])
            if zeros:
                raise ValueError("weights with exact zeros cannot be bit-packed")
        self.cin, self.cout, self.channels = cin, cout, c
        self.register_buffer("wpacked", packed)
        for name in ("alpha", "pre", "post"):
            self.register_buffer(name, getattr(unit, name).reshape(-1)[perm].float().contiguous())
        self.register_buffer("slope", unit.slope.reshape(-1).expand(cout)[perm].float().contiguous())
        self.register_buffer("shift", unit.shift.reshape(-1).float().contiguous())
        self.link_in: Link | None = None
        self.link_out: Link | None = None
        self.next_shift: Tensor | None = None

    def extra_repr(self) -> str:
        return f"{self.cin} -> {self.cout}, upscale={self.upscale}, isa={_ext.isa()[0]}"

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        n, cin, h, w = (int(s) for s in x.shape)
        if cin != self.cin:
            raise ValueError(f"expected {self.cin} input channels, got {cin}")
        if x.device.type != "cpu" or self.wpacked.device.type != "cpu":
            raise ValueError("the bit-packed units run on the CPU only")
        x = x.float()
        act = self.link_in.take(x) if self.link_in is not None else None
        owned = act is not None  # x is the NHWC output of the previous unit of this chain
        xl, x_nchw = _layout(x)
        entry_nchw = self.link_in.nchw if owned and self.link_in is not None else x_nchw
        nthreads = torch.get_num_threads()
        if act is None:
            act = torch.empty((n, h + 2, w + 2, 2 * _words(cin)), dtype=torch.int64)
            _ext.pack_act(_ptr(xl), n, h, w, cin, _ptr(self.shift), _ptr(act), nthreads, x_nchw)
        r, c = self.upscale, self.channels
        resid: Tensor | None = xl
        resid_nchw = x_nchw
        add_after: Tensor | None = None
        if residual is not None:
            if r > 1:
                raise ValueError("an upsampling unit takes no external residual")
            if residual.numel() == 1:
                resid, add_after = None, residual
            else:
                resid, resid_nchw = _layout(residual.float().expand(n, c, h, w))
        last = self.link_out is None or self.next_shift is None or add_after is not None
        out_nchw = int(last and entry_nchw)
        if out_nchw:
            # the end of a chain given NCHW: NCHW, for the float ops that follow (as the float units)
            out = torch.empty((n, c, h * r, w * r))
        elif owned and r == 1 and resid is xl and not x_nchw:
            out = xl  # in place: each pixel's residual is read before its output is written
        else:
            out = torch.empty((n, c, h * r, w * r), memory_format=torch.channels_last)
        nact: Tensor | None = None
        if not last:
            nact = torch.empty((n, h * r + 2, w * r + 2, 2 * _words(c)), dtype=torch.int64)
        _ext.unit(_ptr(act), n, h, w, cin, _ptr(self.wpacked), self.cout, r, _ptr(self.alpha),
                  _ptr(self.pre), _ptr(self.slope), _ptr(self.post), _ptr(resid), _ptr(out),
                  _ptr(None if last else self.next_shift), _ptr(nact), 0, nthreads, resid_nchw, out_nchw)
        if add_after is not None:
            out = out.add_(add_after)
        if not last and self.link_out is not None:
            self.link_out.tensor, self.link_out.act, self.link_out.nchw = out, nact, entry_nchw
        return out


def _layout(x: Tensor) -> tuple[Tensor, int]:
    """(tensor, 1 if NCHW else 0): an NHWC or NCHW contiguous view of x, copying only if neither."""
    if x.is_contiguous(memory_format=torch.channels_last):
        return x, 0
    return x.contiguous(), 1


def _chain_names(net: nn.Module) -> list[str]:
    """The units of a registered family that may be linked, in execution order; [] for others."""
    from models import archs

    arch = archs.for_network(net)
    if arch is None:
        return []
    return [name for name, m in net.named_modules()
            if isinstance(m, DeployUnit) and name not in arch.unchained]


def convert(net: nn.Module) -> nn.Module:
    """Replace (in place) every DeployUnit of ``net`` whose weights have no exact zero by a BitUnit."""
    chain = _chain_names(net)
    replaced: list[tuple[str, BitUnit]] = []
    for parent_name, parent in list(net.named_modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, DeployUnit):
                continue
            full = f"{parent_name}.{name}" if parent_name else name
            try:
                unit = BitUnit(child)
            except ValueError:
                continue  # exact zero weights: this unit keeps the float path
            setattr(parent, name, unit)
            replaced.append((full, unit))
    # link units adjacent in the chain (module order is execution order for the known archs)
    units = dict(replaced)
    for a_name, b_name in zip(chain, chain[1:], strict=False):
        a, b = units.get(a_name), units.get(b_name)
        if a is not None and b is not None and a.channels == b.cin:
            link = Link()
            a.link_out, b.link_in, a.next_shift = link, link, b.shift
    return net
