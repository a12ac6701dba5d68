"""The super-resolution networks' output from their last convolution: ``(y + base) / k``, where
``base`` is the network's (scaled) input upsampled bilinearly,
``F.interpolate(x, scale_factor=r, mode="bilinear", align_corners=False)``.

For inference on the CPU with the kernel extension built, the kernels compute it in two passes
(csrc/bitpacked.c): ``base_rows`` interpolates each input row along its width once, and
``add_base`` combines two of those rows for each output row, adds ``y`` and divides, for a whole
image, a band of rows (``models.bands``) or, in BBCU-M's pipe, each row right after the thin last
convolution has written it. The upsampled base is never written at the output's size. Its bits are
those of torch's generic bilinear kernel, which torch takes for these images on 2 or more threads
(on one thread, and for outputs whose sides sum to at most 128, torch takes another kernel that
rounds differently, so torch's own result depended on the thread count); the add and the true
division are torch's. With gradients, on other devices or without the extension: torch's expression.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from models.blocks import cpu_kernels_take


class BilinearBase:
    """``(y + bilinear(x, r)) / k`` for the last convolution's result ``y`` of an SR network."""

    def __init__(self, x: Tensor, upscale: int, k: float) -> None:
        self.x, self.upscale, self.k = x, upscale, float(k)
        self._base: Tensor | None = None
        self._rows: Tensor | None = None

    @property
    def rows(self) -> Tensor | None:
        """The kernel's first pass, NHWC [N][H][W*r][C], made when first asked for; None where the
        kernels do not take ``x``."""
        if self._rows is None and cpu_kernels_take(self.x):
            from models.kernels.bitpacked import base_rows

            self._rows = base_rows(self.x, self.upscale)
        return self._rows

    @property
    def base(self) -> Tensor:
        """The upsampled input as torch computes it (only the paths without the kernel need it)."""
        if self._base is None:
            self._base = F.interpolate(self.x, scale_factor=self.upscale, mode="bilinear",
                                       align_corners=False)
        return self._base

    def _kernel_takes(self, y: Tensor) -> bool:
        return cpu_kernels_take(y) and y.shape[0] == self.x.shape[0] and self.rows is not None

    def apply(self, y: Tensor, *, consume: bool = False) -> Tensor:
        """``(y + base) / k`` of the whole image; ``consume``: ``y`` is a temporary the result may
        overwrite."""
        if not self._kernel_takes(y):
            return (y + self.base) / self.k
        from models.kernels.bitpacked import add_base

        yl = y.contiguous(memory_format=torch.channels_last)
        out = yl if consume or yl is not y else torch.empty_like(yl)
        assert self.rows is not None
        add_base(yl, self.rows, self.upscale, self.k, out)
        return out

    def apply_rows(self, y: Tensor, dest: Tensor, row: int) -> None:
        """``dest`` = rows ``row ..`` of ``(y + base) / k``, ``y`` holding those rows (a band);
        ``dest``, a channels_last tensor, may be ``y``."""
        if self._kernel_takes(y) and dest.is_contiguous(memory_format=torch.channels_last):
            from models.kernels.bitpacked import add_base

            assert self.rows is not None
            add_base(y.contiguous(memory_format=torch.channels_last), self.rows, self.upscale, self.k, dest,
                     row0=row, threads=1)
            return
        torch.div(y + self.base[:, :, row:row + dest.shape[2]], self.k, out=dest)
