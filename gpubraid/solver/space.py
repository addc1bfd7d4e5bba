"""Spatial coarsening (docs/algorithm.md §3.12): coarse levels whose feature maps are halved.

With ``MGRITOptions.spatial_levels = k`` the states of level l hold images of H/2^min(l,k) ×
W/2^min(l,k) pixels (the last two axes of the sample shape), so a coarse step costs a quarter of a
fine one per halving.  Between a level and the next coarser one:

    restrict_space   2×2 mean:           (R u)(y, x) = ¼ Σ_{dy,dx ∈ {0,1}} u(2y + dy, 2x + dx)
    interpolate      piecewise constant: (P v)(y, x) = v(⌊y/2⌋, ⌊x/2⌋)     (P = 4 Rᵀ, R P = I)

The cycle uses them as XBraid uses its spatial coarsen / refine callbacks: the coarse unknowns are
R u_c, the coarse right-hand side is R r + R u_c − Φ_{l+1}(R u_{c−1}) (correction scheme: R r), and
the correction is u_c ← u_c + P(v − R u_c) (correction scheme: u_c + P v), which is u_c ← v when
the level keeps the fine maps.  The step ``phi`` must take states of every level's shape.

Both operators work element by element on strided views, so every row gets the same bits whatever
the rows around it (rank invariance).
"""
from __future__ import annotations

from ..errors import UserError, check_positive_int


def level_shapes(sample_shape, spatial_levels: int, n_levels: int) -> list[tuple]:
    """Sample shape (B, *S_l) of each of ``n_levels`` levels: the last two axes of S halved on
    levels 1..``spatial_levels``.  UserError unless S has two spatial axes that halve that often."""
    check_positive_int("spatial_levels", spatial_levels, 0)
    shape = tuple(int(x) for x in sample_shape)
    k = min(int(spatial_levels), n_levels - 1)
    if spatial_levels and len(shape) < 3:
        raise UserError(f"spatial_levels needs states with two spatial axes (C, H, W); got sample shape "
                        f"{shape[1:]}")
    shapes = [shape]
    for l in range(1, n_levels):
        if l <= k:
            H, W = shapes[-1][-2:]
            if H % 2 or W % 2:
                raise UserError(f"spatial_levels: {shape[-2]}x{shape[-1]} feature maps halve into whole pixels "
                                f"{halvings(shape[-2], shape[-1])} time(s); got {spatial_levels}")
            shapes.append((*shapes[-1][:-2], H // 2, W // 2))
        else:
            shapes.append(shapes[-1])
    return shapes


def halvings(H: int, W: int) -> int:
    """How often H×W maps halve into whole pixels."""
    n = 0
    while H % 2 == 0 and W % 2 == 0 and H > 1 and W > 1:
        H, W, n = H // 2, W // 2, n + 1
    return n


def restrict_space(xp, u, out=None):
    """R u, the 2×2 mean over the last two axes: (..., H, W) -> (..., H/2, W/2), into ``out`` if given."""
    a, b = u[..., 0::2, 0::2], u[..., 0::2, 1::2]
    c, d = u[..., 1::2, 0::2], u[..., 1::2, 1::2]
    if out is None:
        out = a + b
    else:
        xp.add(a, b, out=out)
    cd = c + d
    out += cd
    out *= 0.25
    return out


def add_interpolated(xp, target, v) -> None:
    """target += P v, v copied onto each pixel's 2×2 block: target (..., 2H, 2W), v (..., H, W)."""
    for dy in (0, 1):
        for dx in (0, 1):
            t = target[..., dy::2, dx::2]
            xp.add(t, v, out=t)
