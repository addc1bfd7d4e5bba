"""3×3 same-padding correlation per layer, shared by :class:`~gpubraid.network.steps.ConvStep` and
the convolutional opening layer.

Correlation convention (as in PyTorch's conv2d), zero padding one pixel:
(K u)_o(y, x) = Σ_i Σ_{dy,dx} K[o, i, dy, dx] u_i(y + dy − 1, x + dx − 1).

On NumPy the convolution is nine GEMMs (C_out × C_in) @ (C_in × B·(H+2)·(W+2)) on shifted views of
one flat zero-padded copy of the images (:func:`pad_flat`): shifting the flat index by
dy·(W+2) + dx moves every image by (dy, dx) at once, so no im2col copy of nine shifted images is
made.  With fewer than 4 input channels (an opening layer on grey images), on other array modules
(CuPy) and for the transpose there, the convolution is one im2col GEMM per layer.

On NumPy both run over blocks of layers and samples (:func:`blocks`) whose padded input holds at
most :data:`BLOCK_BYTES`, so the GEMMs' operands and partial sums stay in a core's L2 cache: at
batches beyond a few images the unblocked GEMMs streamed every tap through memory (MNIST, 8
channels, float64: 100-550 µs per image and layer for 64-650 images at once, 45 with 8;
``bench/README.md``).  A sample's output does not depend on the blocks; a gradient's sum over the
samples runs block by block, in an order fixed by the batch and the image size.
"""
from __future__ import annotations

import numpy as np

#: Bytes of one block's zero-padded input on NumPy (its GEMM outputs are as large again): what
#: stays in the L2 cache of a core.
BLOCK_BYTES = 1 << 19


def blocks(L: int, B: int, sample_bytes: int):
    """(layers, samples) slice pairs that cover (L, B) in order, each of at most BLOCK_BYTES at
    ``sample_bytes`` per sample and layer (at least one sample of one layer): whole batches of
    several layers when a batch fits, else the samples of one layer in pieces of the same size."""
    per = max(1, BLOCK_BYTES // max(1, sample_bytes))
    if per >= B:
        step = max(1, per // max(1, B))
        return [(slice(lo, min(L, lo + step)), slice(0, B)) for lo in range(0, L, step)]
    return [(slice(li, li + 1), slice(lo, min(B, lo + per))) for li in range(L) for lo in range(0, B, per)]


def _padded_bytes(u) -> int:
    """Bytes of one sample of one layer of u (L, B, C, H, W), zero-padded by one pixel."""
    return u.shape[2] * (u.shape[3] + 2) * (u.shape[4] + 2) * u.itemsize


def im2col(xp, u):
    """u (L, B, C, H, W) -> columns (L, C·9, B·H·W), zero padding one pixel.

    Channel-and-tap major, so the convolution of all samples of a layer is one GEMM
    (C_out × 9·C_in) @ (9·C_in × B·H·W).
    """
    L, B, C, H, W = u.shape
    up = xp.zeros((L, C, B, H + 2, W + 2), dtype=u.dtype)
    up[..., 1:-1, 1:-1] = u.transpose(0, 2, 1, 3, 4)
    cols = xp.empty((L, C, 3, 3, B, H, W), dtype=u.dtype)
    for dy in range(3):
        for dx in range(3):
            cols[:, :, dy, dx] = up[..., dy:dy + H, dx:dx + W]
    return cols.reshape(L, C * 9, B * H * W)


def pad_flat(u):
    """u (L, B, C, H, W) -> (L, C, B·(H+2)·(W+2) + 2(W+2) + 2): each image zero-padded by one pixel
    and flattened channel-major, images one after the other, zeros behind the last.

    Entry (l, c, b·(H+2)·(W+2) + (y+1)·(W+2) + x + 1) is u[l, b, c, y, x]."""
    L, B, C, H, W = u.shape
    Wp = W + 2
    M = B * (H + 2) * Wp
    up = np.zeros((L, C, M + 2 * Wp + 2), dtype=u.dtype)
    up[:, :, :M].reshape(L, C, B, H + 2, Wp)[..., 1:H + 1, 1:W + 1] = u.transpose(0, 2, 1, 3, 4)
    return up


def _taps(K):
    """K (L, C_out, C_in, 3, 3) -> (L, 3, 3, C_out, C_in), contiguous."""
    return np.ascontiguousarray(K.transpose(0, 3, 4, 1, 2))


def _conv_padded(up, Kt, H, W, B):
    """Σ_taps Kt[:, dy, dx] @ up shifted by dy·(W+2) + dx: (L, C_out, B·(H+2)·(W+2)); the output
    pixel (y, x) of image b sits at flat index b·(H+2)·(W+2) + y·(W+2) + x."""
    Wp = W + 2
    M = B * (H + 2) * Wp
    acc = np.matmul(Kt[:, 0, 0], up[:, :, :M])
    tmp = np.empty_like(acc)
    for dy in range(3):
        for dx in range(3):
            if dy or dx:
                off = dy * Wp + dx
                np.matmul(Kt[:, dy, dx], up[:, :, off:off + M], out=tmp)
                acc += tmp
    return acc


def conv3x3(xp, u, K, bias=None):
    """K u per layer (+ ``bias`` (L, C_out) per output channel): u (L, B, C_in, H, W),
    K (L, C_out, C_in, 3, 3) -> (L, B, C_out, H, W), a new array."""
    L, B, Ci, H, W = u.shape
    Co = K.shape[1]
    if xp is not np:
        out = xp.matmul(K.reshape(L, Co, -1), im2col(xp, u))
        out = out.reshape(L, Co, B, H, W).transpose(0, 2, 1, 3, 4)
        return out if bias is None else out + bias[:, None, :, None, None]
    out = np.empty((L, B, Co, H, W), dtype=np.result_type(u, K))
    # few input channels (e.g. an opening on grey images): im2col, whose columns hold 9 taps a pixel
    Kt, per_sample = (_taps(K), _padded_bytes(u)) if Ci >= 4 else (K.reshape(L, Co, -1), 9 * Ci * H * W * u.itemsize)
    for ls, bs in blocks(L, B, per_sample):
        ub = u[ls, bs]
        nl, nb = ub.shape[:2]
        if Ci >= 4:
            acc = _conv_padded(pad_flat(ub), Kt[ls], H, W, nb)
            grid = acc.reshape(nl, Co, nb, H + 2, W + 2)[..., :H, :W].transpose(0, 2, 1, 3, 4)
        else:
            grid = np.matmul(Kt[ls], im2col(np, ub)).reshape(nl, Co, nb, H, W).transpose(0, 2, 1, 3, 4)
        if bias is None:
            out[ls, bs] = grid
        else:
            np.add(grid, bias[ls, None, :, None, None], out=out[ls, bs])
    return out


def conv3x3_t(xp, a, K):
    """Kᵀ a per layer, the transpose of :func:`conv3x3` (the correlation with the kernel flipped in
    space and transposed in channels): a (L, B, C_out, H, W) -> (L, B, C_in, H, W)."""
    Kt = xp.ascontiguousarray(K.transpose(0, 2, 1, 3, 4)[:, :, :, ::-1, ::-1])
    return conv3x3(xp, a, Kt)


def conv3x3_grad(xp, a, u):
    """Σ_batch a ⋆ u, the gradient of <a, K u> with respect to K: a (L, B, C_out, H, W),
    u (L, B, C_in, H, W) -> (L, C_out, C_in, 3, 3)."""
    L, B, Co, H, W = a.shape
    Ci = u.shape[2]
    if xp is np:
        Wp = W + 2
        g = np.zeros((L, 3, 3, Co, Ci), dtype=np.result_type(a, u))
        part = np.empty((L, Co, Ci), dtype=g.dtype)
        for ls, bs in blocks(L, B, _padded_bytes(u) + _padded_bytes(a)):
            ub = u[ls, bs]
            nl, nb = ub.shape[:2]
            M = nb * (H + 2) * Wp
            up = pad_flat(ub)
            # a on the padded grid at the output positions of _conv_padded (zeros off the image): the
            # flat padded a read from offset (W+2) + 1
            ag = pad_flat(a[ls, bs])[:, :, Wp + 1:Wp + 1 + M]
            for dy in range(3):
                for dx in range(3):
                    off = dy * Wp + dx
                    np.matmul(ag, up[:, :, off:off + M].transpose(0, 2, 1), out=part[:nl])
                    g[ls, dy, dx] += part[:nl]
        return np.ascontiguousarray(g.transpose(0, 3, 4, 1, 2))
    at = xp.ascontiguousarray(a.transpose(0, 2, 1, 3, 4)).reshape(L, Co, B * H * W)
    g = xp.matmul(at, im2col(xp, u).transpose(0, 2, 1))  # one GEMM per layer
    return g.reshape(L, Co, Ci, 3, 3)
