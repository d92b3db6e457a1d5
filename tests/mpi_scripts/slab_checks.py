"""Run by tests/parallel/test_slabs.py: ``mpiexec -n P python -m mpi4py slab_checks.py N_ANGLES OUT.json``; rank 0
writes every rank's check results (tests/slab_helpers.run_checks) to OUT.json."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from slab_helpers import run_checks  # noqa: E402

from hpc_pt.parallel import MPIComm  # noqa: E402


def main():
    comm = MPIComm()
    out = run_checks(comm, n_angles=int(sys.argv[1]))
    outs = comm.comm.gather(out, root=0)  # test bookkeeping only; the library uses buffer methods
    if comm.rank == 0:
        with open(sys.argv[2], "w") as fh:
            json.dump(outs, fh)


main()
