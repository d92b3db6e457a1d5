"""Reconstruction solvers (DESIGN.md layer 4): operators + data shards in, volume out."""
