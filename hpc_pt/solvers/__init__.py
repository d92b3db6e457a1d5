"""Reconstruction solvers (layer `solvers`, docs/architecture.md): operators + data shards in, volume out."""
