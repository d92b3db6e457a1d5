"""The Dask ranks' mesh on a TLS cluster (``Security.temporary()``): a reconstruction equals serial, the
mesh's connections are TLS with the cluster's certificate, and a connection without it is refused while
the job goes on undisturbed. Helper functions run on the workers are module-level (imported by name)."""
from __future__ import annotations

import socket
import ssl
import time
import uuid
import warnings

import numpy as np
import pytest

from hpc_pt import reconstruct
from test_dask import cluster_client
from test_mpi import _ragged

TOL = 1e-5


@pytest.fixture(scope="module")
def tls():
    from distributed.security import Security

    # a self-signed CA and key for this cluster only (needs `cryptography`)
    yield from cluster_client(2, security=Security.temporary(), protocol="tls")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("tls") / "a4.cxi"
    _ragged(4, path)
    return path


def test_tls_cluster_reconstruction_equals_serial(tls, data, tmp_path):
    from hpc_pt.dask_run import run_dask
    from hpc_pt.parallel.dask import worker_addresses

    assert all(a.startswith("tls://") for a in worker_addresses(tls, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = reconstruct(str(data), method="gd", iterations=4)
        res = run_dask(str(data), out=str(tmp_path / "t.zarr"), client=tls, workers=2, method="gd",
                       iterations=4, dashboard=False)
    diff = float(np.linalg.norm(res.volume - ref.volume) / np.linalg.norm(ref.volume))
    assert diff <= TOL, f"Dask on TLS (2 workers) vs serial: relative difference {diff:.2e}"
    assert res.parallel["ranks"] == 2 and sum(res.parallel["bytes_read_per_rank"]) > 0


def _mesh_rank(token, rank, size, gate):
    """One rank of a hand-made 2-rank job: rank 1 waits for ``gate`` before it joins the mesh."""
    import distributed

    from hpc_pt.parallel.dask import DaskComm

    if gate:
        distributed.Event(gate, client=distributed.get_client()).wait(60)
    comm = DaskComm(token, rank, size, connect_timeout=60)
    try:
        schemes = sorted({type(c).__name__ for c in comm._mesh._comms.values()})
        return comm.sum_scalar(rank + 1.0), schemes
    finally:
        comm.close()


def _refused(address: str, context) -> str:
    """Connect to ``address`` (``tls://host:port``) and speak; return how the listener refused."""
    host, port = address.split("://", 1)[1].rsplit(":", 1)
    raw = socket.create_connection((host, int(port)), timeout=10)
    try:
        s = context.wrap_socket(raw, server_hostname=host) if context is not None else raw
        s.sendall(b"\x00" * 64)
        got = s.recv(1)  # TLS 1.3 reports a refused client certificate on the first read
        return "closed" if got == b"" else f"answered {got!r}"
    except (ssl.SSLError, ConnectionError, OSError) as e:
        return type(e).__name__
    finally:
        raw.close()


def test_connection_without_the_cluster_certificate_is_refused(tls):
    import distributed

    from hpc_pt.parallel.dask import worker_addresses

    a, b = worker_addresses(tls, 2)
    token, gate = uuid.uuid4().hex, f"gate-{uuid.uuid4().hex}"
    r0 = tls.submit(_mesh_rank, token, 0, 2, None, workers=[a], pure=False)
    r1 = tls.submit(_mesh_rank, token, 1, 2, gate, workers=[b], pure=False)
    board = distributed.Variable(f"hpc-pt-addr-{token}-0", client=tls)
    address = board.get(timeout=60)  # rank 0's listener, waiting for rank 1
    assert address.startswith("tls://")
    no_cert = ssl.create_default_context()
    no_cert.check_hostname, no_cert.verify_mode = False, ssl.CERT_NONE
    outcomes = {"tls without a client certificate": _refused(address, no_cert),
                "plain TCP": _refused(address, None)}
    for how, outcome in outcomes.items():
        assert not outcome.startswith("answered"), f"{how}: the listener {outcome}"
    distributed.Event(gate, client=tls).set()
    (s0, kinds0), (s1, _) = r0.result(timeout=120), r1.result(timeout=120)
    assert s0 == s1 == 3.0, "the job goes on after the refused connections"
    assert kinds0 == ["TLS"], kinds0


def test_mesh_set_up_names_the_missing_rank(tls):
    """A rank whose peer never comes gives up after its connect timeout with the peer named."""
    from hpc_pt.parallel.dask import worker_addresses

    a, _ = worker_addresses(tls, 2)
    t0 = time.monotonic()
    fut = tls.submit(_lonely, uuid.uuid4().hex, workers=[a], pure=False)
    msg = fut.result(timeout=60)
    assert "rank(s) [1] did not connect within 2 s" in msg and time.monotonic() - t0 < 30, msg


def _lonely(token):
    from hpc_pt.parallel.dask import DaskComm

    try:
        DaskComm(token, 0, 2, connect_timeout=2)
    except TimeoutError as e:
        return str(e)
    return "no error"


def _generic_comms(on: bool):
    """Make this worker's mesh use ``comm.write`` / ``comm.read`` (the path of non-stream comms such as
    UCX) instead of the TCP/TLS stream, or go back."""
    from hpc_pt.parallel.dask import transport as dask_mesh

    if on:
        dask_mesh._stream_saved = dask_mesh._stream
        dask_mesh._stream = lambda comm: None
    else:
        dask_mesh._stream = dask_mesh._stream_saved


def test_generic_comm_path(tls):
    """The message path of comms without a stream (UCX) carries every collective, on a TLS cluster."""
    from hpc_pt.parallel.dask import run_spmd

    from test_dask import _big, _collectives, _length  # noqa: F401 - the same checks as the TCP path

    tls.run(_generic_comms, True)
    try:
        res = run_spmd(tls, _collectives, workers=2, name="generic")
    finally:
        tls.run(_generic_comms, False)
    expect = _big(0) + _big(1)
    for out in res:
        assert all(out[k] for k in ("alltoallv_complex64", "alltoallv_float32", "alltoallv_int64", "allreduce",
                                    "argument_untouched"))
        assert out["sum_scalar"] == 0.5 + 1.5 and out["big"] == expect[:5].tolist()
        assert out["big_sha"] == res[0]["big_sha"]


def _mismatched(comm):
    if comm.rank == 0:
        return comm.sum_scalar(1.0)  # 8 bytes
    return comm.allreduce_sum(np.ones(2))  # 16 bytes: a different collective


@pytest.mark.parametrize("generic", [False, True], ids=["stream", "message"])
def test_mismatched_collectives_fail_clearly(tls, generic):
    from hpc_pt.parallel.dask import run_spmd

    if generic:
        tls.run(_generic_comms, True)
    try:
        with pytest.raises(RuntimeError, match=r"expected message #0 of (8|16) bytes from rank [01] .* got #0 of "
                                               r"(16|8) bytes: the ranks called collectives in different orders"):
            run_spmd(tls, _mismatched, workers=2, name="mismatch")
    finally:
        if generic:
            tls.run(_generic_comms, False)
