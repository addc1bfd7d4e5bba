"""The memory of L-BFGS in compact form: the last m curvature pairs and their inner products.

L-BFGS's inverse-Hessian approximation after the pairs (s_i, y_i), i = 1..k (oldest first), from the
initial matrix γI, is (Byrd, Nocedal & Schnabel, Math. Programming 63, 1994)

    H = γI + [S  γY] [[R⁻ᵀ (D + γ YᵀY) R⁻¹,  −R⁻ᵀ], [−R⁻¹, 0]] [Sᵀ; γYᵀ]

with S, Y the pairs as columns, R the upper triangle of SᵀY (R_ij = s_iᵀ y_j, i ≤ j) and D its
diagonal.  So H g needs only a = Sᵀg and c = Yᵀg (2k inner products, one reduction over the ranks
that hold slices of the vectors) and the small matrices SᵀY and YᵀY, which grow by one row and
column per stored pair (3k + 3 inner products, one more reduction).  The two-loop recursion gives
the same H g but needs 2k inner products one after the other, each its own reduction: on P ranks,
2k allreduces of one number per step where the compact form takes two.

The pairs live in two (m, n) buffers, one slot per pair, so that the local inner products are two
matrix-vector products and the direction one more; a new pair takes the oldest one's slot.  The
small k × k algebra runs in float64 NumPy on the host, in the pairs' order (oldest first).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np


class CurvatureMemory:
    """The last ``memory`` pairs (s, y) (rows of buffers like the parameters), SᵀY and YᵀY
    (float64, k × k, oldest first); ``slots[i]``: the buffer row of the i-th oldest pair.  The k
    pairs always fill rows 0..k − 1 (a new pair takes the next row, or the oldest pair's)."""

    def __init__(self, memory: int):
        self.memory = memory
        self.S = self.Y = None
        self.clear()

    def clear(self) -> None:
        self.slots: list[int] = []
        self.SY = np.zeros((0, 0))
        self.YY = np.zeros((0, 0))

    def __len__(self) -> int:
        return len(self.slots)

    @property
    def gamma(self) -> float:
        """The initial matrix's scale sᵀy / yᵀy of the newest pair (1 without pairs)."""
        return float(self.SY[-1, -1] / self.YY[-1, -1]) if self.slots else 1.0

    def _chronological(self, values) -> np.ndarray:
        """Per-row values (rows 0..k − 1) in the pairs' order."""
        return np.asarray(values, float)[self.slots]

    # -- the inner products each operation needs, as (rows or vector, vector) blocks ----------------
    def gradient_products(self, g) -> list[tuple]:
        """Blocks giving Sᵀg and Yᵀg (per row) for :meth:`direction`."""
        f = len(self.slots)
        return [(self.S[:f], g), (self.Y[:f], g)] if f else []

    def pair_products(self, s, y) -> list[tuple]:
        """Blocks giving sᵀy, yᵀy, sᵀs of a new pair, then Yᵀs, Sᵀy and Yᵀy per row (:meth:`add`)."""
        f = len(self.slots)
        return [(s, y), (y, y), (s, s)] + ([(self.Y[:f], s), (self.S[:f], y), (self.Y[:f], y)] if f else [])

    # -- operations ---------------------------------------------------------------------------------
    def direction(self, g, gg: float, products) -> tuple[Any, float]:
        """(d, gᵀd) for d = −H g: ``gg`` = gᵀg, ``products`` the values of :meth:`gradient_products`.

        gᵀd = −(γ gᵀg + aᵀp + γ cᵀq) comes from the small products, without another reduction."""
        f = len(self.slots)
        a, c = self._chronological(products[:f]), self._chronological(products[f:2 * f])
        R, gamma = np.triu(self.SY), self.gamma
        x = np.linalg.solve(R, a)                                               # R⁻¹ a
        p = np.linalg.solve(R.T, np.diag(self.SY) * x + gamma * (self.YY @ x) - gamma * c)
        q = -x
        d = g * -gamma                                                          # d = −(γ g + S p + γ Y q)
        d -= _combine(self._per_slot(p), self.S[:f])
        d -= _combine(self._per_slot(gamma * q), self.Y[:f])
        gd = -(gamma * gg + float(a @ p) + gamma * float(c @ q))
        return d, gd

    def _per_slot(self, coef) -> np.ndarray:
        """Coefficients of the pairs (oldest first) placed at their rows."""
        out = np.empty(len(self.slots))
        out[self.slots] = coef
        return out

    def add(self, s, y, products) -> None:
        """Store the pair (s, y) in the oldest pair's slot beyond ``memory`` pairs (else the next
        free one); ``products``: the values of :meth:`pair_products` (s, y) taken before this call."""
        k = len(self.slots)
        sy, yy = products[0], products[1]
        ys, sy_old, yy_old = (self._chronological(products[3 + i * k:3 + (i + 1) * k]) for i in range(3))
        SY = np.empty((k + 1, k + 1))
        SY[:k, :k], SY[k, :k], SY[:k, k], SY[k, k] = self.SY, ys, sy_old, sy
        YY = np.empty((k + 1, k + 1))
        YY[:k, :k], YY[k, :k], YY[:k, k], YY[k, k] = self.YY, yy_old, yy_old, yy
        if self.S is None:
            self.S, self.Y = s[None].repeat(self.memory, 0), y[None].repeat(self.memory, 0)
        drop = max(0, k + 1 - self.memory)
        slot = self.slots[0] if drop else k
        self.S[slot], self.Y[slot] = s, y
        self.slots = self.slots[drop:] + [slot]
        self.SY, self.YY = SY[drop:, drop:], YY[drop:, drop:]

    @staticmethod
    def curvature_ok(products, eps: float) -> bool:
        """Whether the new pair has sᵀy > eps |s| |y| (else it is not stored)."""
        sy, yy, ss = products[:3]
        return sy > eps * math.sqrt(ss * yy)

    # -- checkpoints -------------------------------------------------------------------------------
    def state(self) -> tuple[dict, dict]:
        """Vectors s{i}, y{i} of the pairs (oldest first); scalars: their slots, SᵀY and YᵀY."""
        vectors = {}
        for i, slot in enumerate(self.slots):
            vectors[f"s{i}"], vectors[f"y{i}"] = self.S[slot], self.Y[slot]
        return vectors, {"slots": list(self.slots), "sy": self.SY.tolist(), "yy": self.YY.tolist()}

    def load(self, vectors: dict, scalars: dict, products) -> None:
        """Restore :meth:`state` (into the same slots, so the next steps are bit for bit those of
        the saved run); a checkpoint of the two-loop version (pairs and "rho" only) has SᵀY and
        YᵀY recomputed through ``products`` (blocks -> values, one reduction)."""
        self.clear()
        slots = scalars["slots"] if "slots" in scalars else list(range(len(scalars["rho"])))
        for i, slot in enumerate(slots):
            s, y = vectors[f"s{i}"], vectors[f"y{i}"]
            if self.S is None:
                self.S, self.Y = s[None].repeat(self.memory, 0), y[None].repeat(self.memory, 0)
            self.S[slot], self.Y[slot] = s, y
        self.slots = list(slots)
        k = len(slots)
        if "sy" in scalars:
            self.SY = np.array(scalars["sy"], float).reshape(k, k)
            self.YY = np.array(scalars["yy"], float).reshape(k, k)
        elif k:
            S, Y = self.S[slots], self.Y[slots]
            values = np.asarray(products([(S, y) for y in Y] + [(Y, y) for y in Y]), float)
            self.SY, self.YY = values[:k * k].reshape(k, k).T, values[k * k:].reshape(k, k)


def host_values(x) -> np.ndarray:
    """A NumPy value, or a device array's values (``.get()``), as float64."""
    return np.asarray(x if isinstance(x, (np.ndarray, np.generic)) else x.get(), float)


def _combine(coef: np.ndarray, rows):
    """Σ_i coef_i rows_i: one matrix-vector product on NumPy rows, else one update per row."""
    if isinstance(rows, np.ndarray):
        return coef.astype(rows.dtype) @ rows
    out = rows[0] * float(coef[0])
    for c, r in zip(coef[1:], rows[1:]):
        out += float(c) * r
    return out
