"""The layer-parallel solver: MGRIT (grid hierarchy, relaxation, restriction, coarse solve,
correction, level choice) and the layer-serial chain with the same interface.  It sees a batched
step ``phi(u, data, h)`` and arrays, never a network."""
