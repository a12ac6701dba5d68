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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from models.deploy import DeployUnit
from models.kernels import PIPE_ISAS
from models.kernels import _bitpacked as _ext  # type: ignore[attr-defined]
from models.kernels.chain import KernelUnit, chain_names, link_chain, replace_units

if TYPE_CHECKING:
    from models.bilinear_base import BilinearBase

GROUP = 16


def words(channels: int) -> int:
    """64-bit words holding one bit per channel."""
    return (channels + 63) // 64


def as_array(t: Tensor, nchw: bool = True) -> np.ndarray:
    """A zero-copy numpy view of a CPU tensor for the kernel (``nchw=False``: an NHWC view of a
    channels_last NCHW tensor); the kernel checks its dtype and shape through the buffer protocol."""
    t = t.detach()
    return (t if nchw else t.permute(0, 2, 3, 1)).numpy()


def pack_weights(wsign: Tensor) -> tuple[Tensor, int]:
    """Pack the sign bits of a (Cout, Cin, 3, 3) tensor; returns (packed, number of zero weights)."""
    if wsign.ndim != 4:
        raise ValueError(f"weights: expected (Cout, Cin, 3, 3), got shape {tuple(wsign.shape)}")
    cout, cin = int(wsign.shape[0]), int(wsign.shape[1])
    w = wsign.detach().to(torch.float32).contiguous()  # only the signs matter: any float dtype packs
    packed = torch.empty(((cout + GROUP - 1) // GROUP, 9, words(cin), GROUP), dtype=torch.int64)
    zeros = _ext.pack_weights(weights=w.numpy(), out=packed.numpy())
    return packed, int(zeros)


def pack_activations(x: Tensor, shift: Tensor) -> Tensor:
    """sign(x + shift) of a float32 NCHW tensor as [N][H+2][W+2][K][2] words (zero border)."""
    if x.ndim != 4:
        raise ValueError(f"x: expected an N x C x H x W tensor, got shape {tuple(x.shape)}")
    n, c, h, w = (int(s) for s in x.shape)
    xc = x.contiguous(memory_format=torch.channels_last)
    act = torch.empty((n, h + 2, w + 2, 2 * words(c)), dtype=torch.int64)
    _ext.pack_act(as_array(xc, nchw=False), as_array(shift.reshape(-1)), as_array(act),
                  threads=torch.get_num_threads())
    return act


def binary_counts(x: Tensor, shift: Tensor, wsign: Tensor) -> Tensor:
    """conv2d(sign(x + shift), sign(W), padding=1) as exact int32 counts (NCHW), via the kernel."""
    if x.ndim != 4 or wsign.ndim != 4 or wsign.shape[1:] != (x.shape[1], 3, 3):
        raise ValueError(f"weights of shape {tuple(wsign.shape)} do not convolve an input of shape "
                         f"{tuple(x.shape)}: expected (Cout, {x.shape[1] if x.ndim == 4 else 'C'}, 3, 3)")
    n, cin, h, w = (int(s) for s in x.shape)
    cout = int(wsign.shape[0])
    wp, zeros = pack_weights(wsign)
    if zeros:
        raise ValueError("weights with exact zeros cannot be bit-packed")
    act = pack_activations(x, shift)
    counts = torch.empty((n, h, w, cout), dtype=torch.int32)
    _ext.unit(as_array(act), as_array(wp), cin=cin, cout=cout, counts=as_array(counts),
              threads=torch.get_num_threads())
    return counts.permute(0, 3, 1, 2)


def thin_conv(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """conv2d(x, weight, bias, padding=1) for at most 16 output channels, by the kernel (NHWC out)."""
    n, _, h, w = (int(s) for s in x.shape)
    xl = x.contiguous(memory_format=torch.channels_last)
    out = torch.empty((n, int(weight.shape[0]), h, w), memory_format=torch.channels_last)
    _ext.thin_conv(as_array(xl, nchw=False), as_array(weight.contiguous()), as_array(out, nchw=False),
                   bias=None if bias is None else as_array(bias), threads=torch.get_num_threads())
    return out


def base_rows(x: Tensor, upscale: int) -> Tensor:
    """The first pass of x's bilinear upsampling by ``upscale``: each row interpolated along its
    width, NHWC [N][H][W*upscale][C] (``models.bilinear_base``)."""
    n, c, h, w = (int(s) for s in x.shape)
    rows = torch.empty((n, h, w * upscale, c))
    _ext.base_rows(as_array(x.contiguous(memory_format=torch.channels_last), nchw=False), rows.numpy(),
                   upscale=upscale, threads=torch.get_num_threads())
    return rows


def add_base(y: Tensor, rows: Tensor, upscale: int, k: float, out: Tensor, row0: int = 0,
             threads: int | None = None) -> None:
    """``out = (y + bilinear) / k`` for the rows ``row0 ..`` of an upsampled image that the
    channels_last ``y`` and ``out`` hold (``out`` may be ``y``), from ``base_rows``'s ``rows``."""
    _ext.add_base(as_array(y, nchw=False), rows.numpy(), as_array(out, nchw=False), upscale=upscale, k=k,
                  row0=row0, threads=threads or torch.get_num_threads())


def shuffle_lrelu(x: Tensor, upscale: int, slope: float, out: Tensor | None = None,
                  threads: int | None = None) -> Tensor:
    """leaky_relu(pixel_shuffle(x, upscale), slope) of a channels_last tensor in one pass, into ``out``
    (channels_last; a new tensor if None), on ``threads`` threads (torch's if None)."""
    n, c, h, w = (int(s) for s in x.shape)
    if out is None:
        out = torch.empty((n, c // (upscale * upscale), h * upscale, w * upscale),
                          memory_format=torch.channels_last)
    _ext.shuffle_lrelu(as_array(x, nchw=False), as_array(out, nchw=False), upscale=upscale, slope=slope,
                       threads=threads or torch.get_num_threads())
    return out


class BitUnit(KernelUnit):
    """A BBCU (or BBCU-U) unit computed by the bit-packed kernel; same math as ``DeployUnit``."""

    wpacked: Tensor

    def __init__(self, unit: DeployUnit) -> None:
        r = int(unit.upscale)
        cout = int(unit.wsign.shape[0])
        # sub-pixel-major output order for BBCU-U: o' = (i*r + j)*C + c  <-  o = c*r*r + i*r + j
        perm = torch.arange(cout).view(cout // (r * r), r * r).t().reshape(-1)
        packed, zeros = pack_weights(unit.wsign[perm])
        if zeros:
            raise ValueError("weights with exact zeros cannot be bit-packed")
        super().__init__(unit, perm)
        # flat: a 4-D buffer would be made channels_last with the network, and no longer C-contiguous
        self._wshape = tuple(packed.shape)
        self.register_buffer("wpacked", packed.reshape(-1))
        self._constants_key: tuple[int | None, ...] = ()
        self._constant_arrays: dict[str, np.ndarray | None] = {}

    @property
    def next_shift(self) -> Tensor | None:
        """The linked next unit's shift, read now (moving the network replaces its buffers)."""
        return None if self.link_out is None else self.link_out.consumer.shift

    def extra_repr(self) -> str:
        return f"{self.cin} -> {self.cout}, upscale={self.upscale}, isa={_ext.isa()[0]}"

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        return self._run(x, residual, None)

    def forward_leaky(self, x: Tensor, slope: float) -> Tensor:
        """leaky_relu(self(x), slope) with the activation in the epilogue (the same multiply as torch's,
        after the residual): one pass over the output instead of two."""
        return self._run(x, None, slope)

    def _run(self, x: Tensor, residual: Tensor | None, leaky: float | None) -> Tensor:
        x = self._accept(x)
        xl, x_nchw = _layout(x)
        act, owned, entry_nchw = self._pack(x, xl, x_nchw)
        call = self._allocate(xl, x_nchw, residual, owned, entry_nchw)
        self._launch(act, call, leaky)
        out = call.out if call.add_after is None else call.out.add_(call.add_after)
        if call.next_act is not None and self.link_out is not None:
            self.link_out.tensor, self.link_out.act, self.link_out.nchw = out, call.next_act, entry_nchw
        return out

    def run_chain(self, units: Sequence[nn.Module], x: Tensor, *, consume: bool = False,
                  last: nn.Conv2d | None = None) -> Tensor | None:
        """``units`` (this one first) applied to ``x`` in one kernel call, then ``last`` (in the same
        call where it is a ThinConv2d the kernel takes), or None when they are not a linked run of
        C -> C units (the caller then calls them one by one).

        The kernel computes the rows of all units in a wavefront (``chain`` in csrc/bitpacked.c)
        with the same row functions as ``forward`` (and ``thin_conv``), so the result is bitwise
        the same.
        """
        from models.blocks import ThinConv2d, cpu_kernels_take

        if len(units) < 2 or not _is_chain(units):
            return None
        first: BitUnit = units[0]  # type: ignore[assignment]
        end: BitUnit = units[-1]  # type: ignore[assignment]
        x = first._accept(x)
        act = first.link_in.take(x) if first.link_in is not None else None
        entry_nchw = first.link_in.nchw if act is not None and first.link_in is not None else 0
        xl, x_nchw = _layout(x)
        if x_nchw:  # the kernel works in NHWC; the result goes back to NCHW, as the units would give
            entry_nchw, xl = 1, x.contiguous(memory_format=torch.channels_last)
        n, c, h, w = (int(s) for s in xl.shape)
        # in place when x is the linked predecessor's own output (nothing else holds it), the
        # caller's temporary, or the NHWC copy made just above
        out = xl if act is not None or consume or x_nchw else torch.empty_like(xl)
        next_act = None
        if end.link_out is not None:
            next_act = torch.empty((n, h + 2, w + 2, 2 * words(c)), dtype=torch.int64)
        tail = tail_w = tail_b = None
        if (isinstance(last, ThinConv2d) and last.in_channels == c and last.out_channels <= 16
                and cpu_kernels_take(xl, last.weight)):
            tail = torch.empty((n, last.out_channels, h, w), memory_format=torch.channels_last)
            tail_w = as_array(last.weight.detach().contiguous())
            tail_b = None if last.bias is None else as_array(last.bias.detach())
        params = [u._chain_params() for u in units]  # type: ignore[operator]
        _ext.chain(as_array(xl, nchw=False), as_array(out, nchw=False), params,
                   act=None if act is None else as_array(act),
                   next_shift=None if next_act is None else end._constants()["next_shift"],
                   next_act=None if next_act is None else as_array(next_act),
                   tail_weight=tail_w, tail_bias=tail_b,
                   tail_out=None if tail is None else as_array(tail, nchw=False),
                   threads=torch.get_num_threads())
        if tail is not None:
            return tail
        if entry_nchw and end.link_out is None:
            out = out.contiguous()
        if next_act is not None and end.link_out is not None:
            end.link_out.tensor, end.link_out.act, end.link_out.nchw = out, next_act, entry_nchw
        return out if last is None else last(out)

    def run_pipe(self, units: Sequence[nn.Module], slope: float, last: nn.Conv2d, x: Tensor,
                 base: BilinearBase | None = None) -> Tensor | None:
        """``last(leaky_relu(units[-1](... units[0](x)), slope))`` in one kernel call (``pipe``), or
        None where the kernel cannot (the caller then goes step by step, with the same result); with
        ``base``, ``base.apply`` of that, each row as soon as it is computed.

        ``units``: C -> C bit-packed units (upsampling or not); ``last`` a ThinConv2d."""
        from models.blocks import ThinConv2d, cpu_kernels_take

        c = self.cin
        if (not isinstance(last, ThinConv2d) or last.in_channels != c or last.out_channels > 16
                or c % 16 or _ext.isa()[0] not in PIPE_ISAS or x.ndim != 4 or x.shape[0] != 1
                or not cpu_kernels_take(x, last.weight)
                or not all(isinstance(u, BitUnit) and u.cin == c and u.channels == c for u in units)):
            return None
        x = self._accept(x)
        act = self.link_in.take(x) if self.link_in is not None else None
        xl, x_nchw = _layout(x)
        if x_nchw:
            xl = x.contiguous(memory_format=torch.channels_last)
        if act is None:
            _, _, h, w = (int(s) for s in xl.shape)
            act = torch.empty((1, h + 2, w + 2, 2 * words(c)), dtype=torch.int64)
            _ext.pack_act(as_array(xl, nchw=False), as_array(self.shift), as_array(act),
                          threads=torch.get_num_threads())
        scale = 1
        params = []
        for i, u in enumerate(units):
            assert isinstance(u, BitUnit)
            const = u._constants()
            params.append((*(const[k] for k in ("weights", "alpha", "pre", "slope", "post", "shift")),
                           u.upscale, slope if i == len(units) - 1 else None))
            scale *= u.upscale
        _, _, h, w = (int(s) for s in xl.shape)
        out = torch.empty((1, last.out_channels, h * scale, w * scale), memory_format=torch.channels_last)
        rows = base.rows if base is not None and base.upscale == scale else None
        _ext.pipe(as_array(xl, nchw=False), as_array(act), as_array(out, nchw=False), params,
                  as_array(last.weight.detach().contiguous()),
                  bias=None if last.bias is None else as_array(last.bias.detach()),
                  base=None if rows is None else rows.numpy(), k=1.0 if base is None else base.k,
                  threads=torch.get_num_threads())
        return out if base is None or rows is not None else base.apply(out, consume=True)

    def _chain_params(self) -> tuple[np.ndarray | None, ...]:
        """(weights, alpha, pre, slope, post, shift) as the chain kernel takes them."""
        const = self._constants()
        return tuple(const[k] for k in ("weights", "alpha", "pre", "slope", "post", "shift"))

    def _accept(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.cin:
            raise ValueError(f"expected an N x {self.cin} x H x W input, got shape {tuple(x.shape)}")
        if x.device.type != "cpu" or self.wpacked.device.type != "cpu":
            raise ValueError("the bit-packed units run on the CPU only")
        return x.float()

    def _pack(self, x: Tensor, xl: Tensor, x_nchw: int) -> tuple[Tensor, bool, int]:
        """The input's packed signs (the linked predecessor's, or packed here from ``xl``, x in the
        layout ``x_nchw``), whether x is that predecessor's own output, and the layout the chain was
        entered with (1: NCHW)."""
        act = self.link_in.take(x) if self.link_in is not None else None
        if act is not None and self.link_in is not None:
            return act, True, self.link_in.nchw
        n, _, h, w = (int(s) for s in x.shape)
        act = torch.empty((n, h + 2, w + 2, 2 * words(self.cin)), dtype=torch.int64)
        _ext.pack_act(as_array(xl, bool(x_nchw)), as_array(self.shift), as_array(act), nchw=bool(x_nchw),
                      threads=torch.get_num_threads())
        return act, False, x_nchw

    def _allocate(self, xl: Tensor, x_nchw: int, residual: Tensor | None, owned: bool,
                  entry_nchw: int) -> _Call:
        """The output and residual tensors of this call, in the layouts the kernel reads and writes."""
        n, _, h, w = (int(s) for s in xl.shape)
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
        last = self.link_out is None or add_after is not None
        out_nchw = int(last and entry_nchw)
        if out_nchw:
            # the end of a chain given NCHW: NCHW, for the float ops that follow (as the float units)
            out = torch.empty((n, c, h * r, w * r))
        elif owned and r == 1 and resid is xl and not x_nchw:
            out = xl  # in place: each pixel's residual is read before its output is written
        else:
            out = torch.empty((n, c, h * r, w * r), memory_format=torch.channels_last)
        next_act = None
        if not last:
            next_act = torch.empty((n, h * r + 2, w * r + 2, 2 * words(c)), dtype=torch.int64)
        return _Call(out, out_nchw, resid, resid_nchw, add_after, next_act)

    def _launch(self, act: Tensor, call: _Call, leaky: float | None = None) -> None:
        """Run the kernel: conv, epilogue (and a leaky ReLU), the next unit's packing if any."""
        const = self._constants()
        _ext.unit(
            as_array(act), const["weights"], cin=self.cin, cout=self.cout, upscale=self.upscale,
            alpha=const["alpha"], pre=const["pre"], slope=const["slope"], post=const["post"],
            residual=None if call.resid is None else as_array(call.resid, bool(call.resid_nchw)),
            residual_nchw=bool(call.resid_nchw), out=as_array(call.out, bool(call.out_nchw)),
            out_nchw=bool(call.out_nchw),
            next_shift=const["next_shift"] if call.next_act is not None else None,
            next_act=None if call.next_act is None else as_array(call.next_act),
            threads=torch.get_num_threads(), leaky_slope=leaky)

    def _constants(self) -> dict[str, np.ndarray | None]:
        """Array views of the unit's constant tensors, made again only when a tensor was replaced
        (``Module.to`` may swap buffers): each view costs microseconds, a network makes many calls."""
        tensors = (self.wpacked, self.alpha, self.pre, self.slope, self.post, self.shift,
                   self.next_shift)
        key = tuple(None if t is None else t.data_ptr() for t in tensors)
        if key != self._constants_key:
            self._constants_key = key
            self._constant_arrays = {
                "weights": as_array(self.wpacked.view(self._wshape)), "alpha": as_array(self.alpha),
                "pre": as_array(self.pre), "slope": as_array(self.slope), "post": as_array(self.post),
                "shift": as_array(self.shift),
                "next_shift": None if self.next_shift is None else as_array(self.next_shift)}
        return self._constant_arrays


@dataclass
class _Call:
    """The tensors of one kernel launch (``*_nchw``: 1 for NCHW, 0 for channels_last)."""

    out: Tensor
    out_nchw: int
    resid: Tensor | None
    resid_nchw: int
    add_after: Tensor | None  # a scalar residual (the DnCNN tail's zero), added after the kernel
    next_act: Tensor | None


def _is_chain(units: Sequence[nn.Module]) -> bool:
    """Whether ``units`` are bit-packed C -> C units, each linked to the next (a known architecture's
    run of units that each take the previous one's output)."""
    if not all(isinstance(u, BitUnit) and u.upscale == 1 and u.cin == u.channels for u in units):
        return False
    c = units[0].cin
    return all(u.cin == c and u.link_out is not None and u.link_out is v.link_in
               for u, v in zip(units, units[1:], strict=False))


def _layout(x: Tensor) -> tuple[Tensor, int]:
    """(tensor, 1 if NCHW else 0): an NHWC or NCHW contiguous view of x, copying only if neither."""
    if x.is_contiguous(memory_format=torch.channels_last):
        return x, 0
    return x.contiguous(), 1


def convert(net: nn.Module) -> nn.Module:
    """Replace (in place) every DeployUnit of ``net`` whose weights have no exact zero by a BitUnit."""
    # a unit with exact zero weights raises ValueError in BitUnit and keeps the float path
    chain = chain_names(net)  # before the deploy units are replaced
    units = dict(replace_units(net, BitUnit))
    link_chain(chain, units)  # type: ignore[arg-type]
    return net
