"""Heuristic solvers: tabu search and simulated annealing on dwave-samplers, and the constraint-
keeping local search (moves) they and branch and bound share."""
