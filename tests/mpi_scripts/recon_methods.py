"""Run by tests/parallel/test_mpi.py as ``mpiexec -n P python -m mpi4py recon_methods.py DATA OUTDIR CASES.json``.

First checks the :class:`MPIComm` collectives (rank 0 writes OUTDIR/comm.json). Then every rank
reconstructs DATA (a CXI file) with ``MPIComm`` for each case ``[name, method, iterations, settings]``
of CASES.json (setting ``_in_memory``: pass the read Dataset instead of the path); rank 0 saves the volume to OUTDIR/<name>.npy and every rank's bytes read and shard plan
to OUTDIR/<name>.json. A case that raises InputError (e.g. two-step with an angle split over ranks) has
its message saved to OUTDIR/<name>.error instead.
"""
import json
import os
import sys
import warnings

import numpy as np

from hpc_pt import reconstruct
from hpc_pt.errors import InputError
from hpc_pt.parallel import MPIComm


def check_comm(comm, outdir):
    r, p = comm.rank, comm.size
    x = np.full((3, 4), r + 1j * (r + 1), dtype=np.complex64)
    s = comm.allreduce_sum(x)
    ok = {
        "allreduce_complex64": bool(s.dtype == np.complex64 and np.allclose(s, sum(q + 1j * (q + 1) for q in range(p)))),
        "argument_untouched": bool(np.all(x == r + 1j * (r + 1))),
        "sum_scalar": comm.sum_scalar(r + 0.5) == sum(q + 0.5 for q in range(p)),
        "bcast_array": bool(np.all(comm.bcast(np.full(5, float(r)), root=p - 1) == p - 1)),
        "bcast_scalar": comm.bcast(r * 2.5, root=0) == 0.0,
        # slab volumes: the local dot products summed over ranks (x differs per rank)
        "volume_dot": bool(np.isclose(comm.volume_dot(x, x),
                                      sum(float(np.vdot(np.full((3, 4), q + 1j * (q + 1)),
                                                        np.full((3, 4), q + 1j * (q + 1))).real) for q in range(p)))),
    }
    if r == 0:
        with open(os.path.join(outdir, "comm.json"), "w") as fh:
            json.dump(ok, fh)


def main():
    data, outdir, cases_file = sys.argv[1:4]
    with open(cases_file) as fh:
        cases = json.load(fh)
    comm = MPIComm()
    check_comm(comm, outdir)
    warnings.simplefilter("ignore")  # tiny problems: two-step warns about overlap / convergence
    for name, method, iterations, settings in cases:
        settings = dict(settings)
        source = data
        if settings.pop("_in_memory", False):  # every rank holds the whole Dataset and slices its shard
            from hpc_pt.io import read_cxi

            source = read_cxi(data)
        try:
            res = reconstruct(source, comm=comm, method=method, iterations=iterations, **settings)
        except InputError as e:
            if comm.rank == 0:
                with open(os.path.join(outdir, f"{name}.error"), "w") as fh:
                    fh.write(str(e))
            continue
        info = {"rank": comm.rank, "bytes_read": res.bytes_read, "parallel": res.parallel}
        info = comm.comm.gather(info, root=0)  # test bookkeeping only; the library uses buffer methods
        if comm.rank == 0:
            np.save(os.path.join(outdir, f"{name}.npy"), res.volume)
            with open(os.path.join(outdir, f"{name}.json"), "w") as fh:
                json.dump(info, fh)


if __name__ == "__main__":
    main()
