"""Exact solvers: exhaustive enumeration and branch and bound (with its node space, bounds, QP and
SDP relaxations)."""
