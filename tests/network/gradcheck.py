"""Finite-difference check of a network's gradient, one parameter group at a time."""

import numpy as np

from gpubraid.network.reference import evaluate


def fd_check(net, theta, x, y, seed=1, tol=1e-6):
    layout = net.layout()
    ev = evaluate(net, layout, theta, x, y)
    rng = np.random.default_rng(seed)
    for name, (lo, hi) in layout.offsets.items():
        d = np.zeros_like(theta)
        d[lo:hi] = rng.standard_normal(hi - lo)
        eps = 1e-6
        fd = (evaluate(net, layout, theta + eps * d, x, y, grad=False).objective
              - evaluate(net, layout, theta - eps * d, x, y, grad=False).objective) / (2 * eps)
        an = float(ev.grad @ d)
        assert abs(fd - an) <= tol * max(abs(an), 1e-3), (name, fd, an)
    return ev
