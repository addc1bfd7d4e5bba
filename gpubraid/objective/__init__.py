"""The objective across the ranks: J(θ) and ∇J(θ) by forward and adjoint chain solves (MGRIT or
serial), and forward passes for scoring and prediction."""
