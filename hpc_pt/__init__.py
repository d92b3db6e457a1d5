"""hpc-pt: joint ptycho-tomography reconstruction, from a laptop to MPI ranks and Dask workers."""
__version__ = "0.1.0"
