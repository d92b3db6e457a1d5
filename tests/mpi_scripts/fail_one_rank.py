"""Run by tests/parallel/test_mpi.py as ``mpiexec -n 2 python fail_one_rank.py DATA OUT`` (no ``-m mpi4py``, so
the CLI's own abort is what stops the job): the CLI's ``reconstruct --backend mpi`` where rank 1's solver
raises after the setup while rank 0 goes on into the solver's first collective. The job must end
non-zero within seconds instead of rank 0 waiting forever."""
import dataclasses
import sys

from mpi4py import MPI

from hpc_pt.cli import main
from hpc_pt.errors import InputError
from hpc_pt.solvers import gd
from hpc_pt.solvers.registry import register_solver

if MPI.COMM_WORLD.Get_rank() == 1:
    def broken(*args, **kwargs):
        raise InputError("injected failure on one rank")

    register_solver(dataclasses.replace(gd.SPEC, run=broken), overwrite=True)

sys.exit(main(["reconstruct", sys.argv[1], "--backend", "mpi", "--method", "gd", "--iterations", "50",
               "--out", sys.argv[2], "--quiet"]))
