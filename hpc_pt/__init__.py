"""hpc-pt: joint ptycho-tomography reconstruction, from a laptop to MPI ranks and Dask workers."""
__version__ = "0.1.0"


def reconstruct(data, out=None, config=None, **settings):
    """Reconstruct a CXI file or Dataset; see :func:`hpc_pt.pipeline.reconstruct` (lazy import)."""
    from .pipeline import reconstruct as _reconstruct

    return _reconstruct(data, out=out, config=config, **settings)
