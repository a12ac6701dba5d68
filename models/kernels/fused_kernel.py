"""The Triton kernel of ``models.kernels.fused`` (imports Triton; the unit module does not).

Undecorated: ``models.kernels.fused`` compiles it with ``triton.jit`` for CUDA tensors and wraps it
in Triton's interpreter for CPU tensors.
"""

from __future__ import annotations

import triton.language as tl


def unit_kernel(s_ptr, w_ptr, alpha_ptr, pre_ptr, slope_ptr,
                post_ptr, res_ptr, rs_n, rs_c, rs_h, rs_w,
                out_ptr, os_n, os_c, os_h, os_w,
                nshift_ptr, ns_ptr, M, H, W, CIN: tl.constexpr, COUT,
                CIN_PAD: tl.constexpr, COUT_PAD, R: tl.constexpr, HAS_NEXT: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = m < M
    o_ok = o < COUT
    m64 = m.to(tl.int64)
    hw = H * W
    n = m64 // hw
    h = (m64 % hw) // W
    w = m64 % W
    kk = tl.arange(0, BLOCK_K)
    acc = tl.full((BLOCK_M, BLOCK_N), 0, tl.int32)  # tl.zeros is a jit function: no interpreter
    for tap in tl.static_range(9):  # unrolled: constant tap offsets
        hh = h + (tap // 3 - 1)
        ww = w + (tap % 3 - 1)
        inside = m_ok & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
        row = ((n * H + hh) * W + ww) * CIN
        for k0 in tl.static_range(0, CIN_PAD, BLOCK_K):
            k = k0 + kk
            if CIN % BLOCK_K == 0:  # no channel mask: the pixel mask is uniform along a row (vector loads)
                a = tl.load(s_ptr + row[:, None] + k[None, :], mask=inside[:, None], other=0)
            else:
                a = tl.load(s_ptr + row[:, None] + k[None, :],
                            mask=inside[:, None] & (k[None, :] < CIN), other=0)
            b = tl.load(w_ptr + (tap * CIN_PAD + k)[:, None] * COUT_PAD + o[None, :])
            acc = tl.dot(a, b, acc, out_dtype=tl.int32)
    alpha = tl.load(alpha_ptr + o, mask=o_ok, other=0.0)
    pre = tl.load(pre_ptr + o, mask=o_ok, other=0.0)
    slope = tl.load(slope_ptr + o, mask=o_ok, other=0.0)
    post = tl.load(post_ptr + o, mask=o_ok, other=0.0)
    # one rounding per operation, in DeployUnit's order (FMA contraction is off at compile time)
    y = acc.to(tl.float32) * alpha[None, :]
    y = y + pre[None, :]
    y = tl.where(y > 0, y, y * slope[None, :])
    y = y + post[None, :]
    # BBCU-U: conv channel o = c*R*R + i*R + j goes to output pixel (h*R + i, w*R + j), channel c
    if R == 1:  # plain arithmetic on o keeps the channel axis provably contiguous (vector access)
        c = o.to(tl.int64)
        i = tl.full((BLOCK_N,), 0, tl.int64)
        j = tl.full((BLOCK_N,), 0, tl.int64)
    else:
        c = (o // (R * R)).to(tl.int64)
        i = ((o // R) % R).to(tl.int64)
        j = (o % R).to(tl.int64)
    ok = m_ok[:, None] & o_ok[None, :]
    res = tl.load(res_ptr + (n * rs_n + h * rs_h + w * rs_w)[:, None] + (c * rs_c)[None, :], mask=ok,
                  other=0.0)
    y = y + res
    oh = h[:, None] * R + i[None, :]
    ow = w[:, None] * R + j[None, :]
    tl.store(out_ptr + (n * os_n)[:, None] + (c * os_c)[None, :] + oh * os_h + ow * os_w, y, mask=ok)
    if HAS_NEXT:
        nshift = tl.load(nshift_ptr + c, mask=o_ok, other=0.0)
        v = y + nshift[None, :]
        sgn = tl.where(v > 0, 1, tl.where(v < 0, -1, 0)).to(tl.int8)
        cout_img = COUT // (R * R)
        tl.store(ns_ptr + ((n[:, None] * (H * R) + oh) * (W * R) + ow) * cout_img + c[None, :], sgn,
                 mask=ok)
