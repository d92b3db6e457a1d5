"""The point-to-point mesh between the rank tasks of one Dask job, on Dask's own communication layer.

Every rank listens with :func:`distributed.comm.listen` on its worker's address scheme and host (``tcp://``,
``tls://``, ``ucx://``; port 0) with the worker's :class:`distributed.security.Security` listen arguments,
publishes the listener's contact address in a ``distributed.Variable`` named after the job token, connects
with :func:`distributed.comm.connect` (the worker's connection arguments: its certificate on a TLS cluster)
to every lower rank and accepts every higher one. On a TLS cluster a peer without the cluster's certificate
fails the TLS handshake and never reaches the mesh; on any cluster the first message of a connection must
carry the job token and a rank this job expects, or the connection is dropped.

Messages. On ``tcp://`` and ``tls://`` comms a collective reads and writes the comm's own stream (the tornado
``IOStream`` that distributed.comm set up, TLS included) with a 16-byte header (sequence number, size), the
payload written straight from the source array and read straight into the destination array
(``IOStream.read_into``): nothing is pickled, serialised or copied on the way. Other comms (``ucx://``) carry
``{"s": sequence, "n": bytes, "d": Serialized({}, [buffer])}`` through ``comm.write`` / ``comm.read``: the
payload travels as one raw frame and, the comms being opened with ``deserialize=False``, arrives as that
frame (no serializer family runs, so no ``pickle.loads``). Either way the receiver checks the sequence
number and size, so ranks that call collectives in different orders fail with a clear error.

Progress. Each mesh has its own asyncio event loop, run in the rank task's own thread and only while the
rank is inside the set-up or a collective (like an MPI progress engine): no extra thread, no hand-off
between threads per message, and the worker's event loop (its heartbeats) is not touched. An exchange
sends to and receives from all peers at once (``asyncio.gather``), so no ordering can deadlock. While it
waits, the rank checks the job's abort flag every ``POLL_S``.

Why not Dask's own data movement (futures, ``Queue``, actors): every one of those goes through the
scheduler and costs milliseconds per message, while CG does several scalar reductions per iteration.
"""
from __future__ import annotations

import asyncio
import struct
import time

import numpy as np

#: seconds a blocked exchange waits without progress before it checks the job's abort flag
POLL_S = 0.25
_HELLO = "hpc-pt-hello"
_HDR = struct.Struct("<QQ")  # sequence number, payload bytes (the stream path)
#: payloads up to this size travel in one write with their header (the stream path)
SMALL = 1 << 12


class RankAborted(RuntimeError):
    """This rank stopped because another rank failed (or the job was aborted): not the original error."""

    secondary = True


def _addr_name(token: str, rank: int) -> str:
    return f"hpc-pt-addr-{token}-{rank}"


def _worker_endpoint():
    """``(listen address, Security)`` of this rank: the worker's scheme and host, port 0, and the worker's
    security settings; outside a worker (or on an ``inproc://`` cluster) plain TCP on the loopback."""
    from distributed.comm.addressing import get_address_host, parse_address, unparse_host_port
    from distributed.security import Security

    try:
        import distributed

        worker = distributed.get_worker()
        scheme, _ = parse_address(worker.address)
        security = worker.security or Security()
        if scheme in ("tcp", "tls", "ucx"):
            return f"{scheme}://{unparse_host_port(get_address_host(worker.address), 0)}", security
    except Exception:  # noqa: BLE001 - not inside a worker task
        security = Security()
    return "tcp://127.0.0.1:0", security


class Mesh:
    """Connections from rank ``rank`` of ``size`` to every other rank of the job ``token``.

    Parameters
    ----------
    token : str
        The job (its address board in ``distributed.Variable``).
    rank, size : int
        This rank's place in the job.
    client : distributed.Client
        A ``distributed.Client`` for the address board (the worker's client inside a rank task).
    check_abort : callable(str)
        Raises (:class:`RankAborted`) when the job's abort flag is set; called every ``POLL_S`` while waiting.
    timeout : float
        Seconds the set-up may take before it gives up with ``TimeoutError``.

    Raises
    ------
    TimeoutError
        When a peer does not start or connect within ``timeout``.
    RankAborted
        From ``check_abort``, when the job is aborted during the set-up.
    """

    def __init__(self, token: str, rank: int, size: int, client, check_abort, timeout: float = 120.0):
        import distributed

        self.token, self.rank, self.size = str(token), int(rank), int(size)
        self._client, self._check_abort = client, check_abort
        self._comms: dict = {}
        self._accepted = 0
        self._listener = None
        self._closed = False
        self._loop = asyncio.new_event_loop()
        addr, security = _worker_endpoint()
        self._listen_args = security.get_listen_args("worker")
        self._connect_args = security.get_connection_args("worker")
        deadline = time.monotonic() + float(timeout)
        try:
            self._all_in = asyncio.Event()
            contact = self._run(self._listen(addr), "starting the listener", deadline)
            board = distributed.Variable(_addr_name(self.token, self.rank), client=client)
            board.set(contact)
            for peer in range(self.rank):  # connect to every lower rank
                var = distributed.Variable(_addr_name(self.token, peer), client=client)
                while True:
                    try:
                        paddr = var.get(timeout=POLL_S * 4)
                        break
                    except TimeoutError:
                        self._check_abort(f"waiting for rank {peer}'s address")
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"rank {peer} did not start within {timeout:g} s") from None
                self._run(self._connect(peer, paddr, max(1.0, deadline - time.monotonic())),
                           f"connecting to rank {peer}", deadline)
            if self.rank < self.size - 1:  # accept every higher rank
                try:
                    self._run(self._all_in.wait(), "waiting for the other ranks to connect", deadline)
                except TimeoutError:
                    missing = [p for p in range(self.rank + 1, self.size) if p not in self._comms]
                    raise TimeoutError(f"rank {self.rank} of {self.size}: rank(s) {missing} did not connect "
                                       f"within {timeout:g} s") from None
            self._run(self._stop_listener(), "closing the listener")
            try:
                board.delete()  # every higher rank has read it and connected
            except Exception:  # noqa: BLE001 - bookkeeping only
                pass
        except BaseException:
            self.close()
            raise

    # -- the event loop ------------------------------------------------------------------------------
    def _run(self, coro, what: str, deadline: float | None = None):
        """Run ``coro`` to completion on this mesh's event loop, in the calling (rank) thread: the loop runs
        only while a rank is inside a collective or the set-up, like an MPI progress engine. The job's abort
        flag is checked every ``POLL_S`` of waiting."""
        loop = self._loop
        task = asyncio.ensure_future(coro, loop=loop)
        try:
            while True:
                timer = loop.call_later(POLL_S, loop.stop)  # run_until_complete returns early, task pending
                try:
                    loop.run_until_complete(task)
                except RuntimeError:
                    if task.done():
                        raise
                finally:
                    timer.cancel()
                if task.done():
                    return task.result()
                self._check_abort(what)
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"rank {self.rank} of {self.size}: timed out {what}")
        except BaseException:
            if not task.done():
                task.cancel()
                try:
                    loop.run_until_complete(asyncio.wait((task,), timeout=1))
                except Exception:  # noqa: BLE001 - the mesh is being torn down
                    pass
            raise

    # -- set-up ---------------------------------------------------------------------------------------
    async def _listen(self, addr: str) -> str:
        from distributed.comm import listen

        self._listener = listen(addr, self._on_comm, deserialize=False, **self._listen_args)
        await self._listener.start()
        return self._listener.contact_address

    async def _on_comm(self, comm) -> None:
        """A connection from a peer: its first message must name this job and a higher rank."""
        try:
            hello = await asyncio.wait_for(comm.read(), 30)
        except Exception:  # noqa: BLE001 - closed, timed out, or not a message
            comm.abort()
            return
        peer = hello.get("rank") if isinstance(hello, dict) else None
        if (not isinstance(hello, dict) or hello.get("op") != _HELLO or hello.get("token") != self.token
                or not isinstance(peer, int) or not self.rank < peer < self.size or peer in self._comms):
            comm.abort()  # a stray connection: not one of this job's ranks
            return
        _tune(comm)
        self._comms[peer] = comm
        self._accepted += 1
        if self._accepted == self.size - 1 - self.rank:
            self._all_in.set()

    async def _connect(self, peer: int, addr: str, timeout: float) -> None:
        from distributed.comm import connect

        comm = await connect(addr, timeout=timeout, deserialize=False, **self._connect_args)
        await comm.write({"op": _HELLO, "token": self.token, "rank": self.rank})
        _tune(comm)
        self._comms[peer] = comm

    async def _stop_listener(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None

    # -- messages -------------------------------------------------------------------------------------
    def exchange(self, seq: int, sends: dict, recvs: dict, what: str) -> None:
        """Send to and receive from several peers at once, as message number ``seq`` on every rank.

        Send ``sends[peer]`` (bytes-like) to each peer and receive exactly ``len(recvs[peer])`` bytes into
        each writable byte memoryview ``recvs[peer]``, all at once; message number ``seq`` on every rank.

        Parameters
        ----------
        seq : int
            The collective's sequence number (the receiver checks it).
        sends : dict
            ``{peer: bytes-like}``.
        recvs : dict
            ``{peer: writable byte memoryview}``, each of the size expected from that peer.
        what : str
            What the collective is doing, for error messages ("summing a scalar").

        Raises
        ------
        RankAborted
            When the mesh is closed, a peer is gone, or the job's abort flag is set.
        RuntimeError
            When a peer's message has another sequence number or size (collectives called in different orders).
        """
        if self._closed:
            raise RankAborted(f"rank {self.rank} of {self.size}: communicator closed")
        self._run(self._exchange(seq, sends, recvs, what), what)

    async def _exchange(self, seq: int, sends: dict, recvs: dict, what: str) -> None:
        peers, jobs = [], []
        for p, b in sends.items():
            peers.append(p)
            jobs.append(self._send(p, memoryview(b).cast("B"), seq, what))
        for p, t in recvs.items():
            peers.append(p)
            jobs.append(self._recv(p, t, seq, what))
        done = await asyncio.gather(*jobs, return_exceptions=True)
        for p, d in zip(peers, done):
            if isinstance(d, BaseException):
                if isinstance(d, RuntimeError):  # RankAborted, or a message mismatch
                    raise d
                raise self._gone(p, what, d) from None

    async def _check_small(self, p, fut, scratch, target, seq, what):
        await fut
        rseq, nbytes = _HDR.unpack_from(scratch)
        if rseq != seq or nbytes != target.nbytes:
            raise self._mismatch(p, seq, target.nbytes, rseq, nbytes, what)
        target[:] = memoryview(scratch)[_HDR.size:]

    def _gone(self, p: int, what: str, e=None) -> RankAborted:
        how = f"is gone ({e!r})" if e is not None else "closed its connection (it failed or stopped)"
        return RankAborted(f"rank {self.rank} of {self.size}: rank {p} {how} while {what}")

    def _mismatch(self, p: int, seq: int, want: int, rseq, got, what: str) -> RuntimeError:
        return RuntimeError(f"DaskComm rank {self.rank}: expected message #{seq} of {want} bytes from rank {p} "
                            f"while {what}, got #{rseq} of {got} bytes: the ranks called collectives in "
                            "different orders or with different sizes")

    def _send(self, p: int, mv: memoryview, seq: int, what: str):
        """An awaitable that sends ``mv`` to ``p`` as message ``seq``."""
        comm = self._comms.get(p)
        stream = _stream(comm)
        if stream is not None:  # tcp / tls: header + raw bytes on the comm's own stream
            hdr = _HDR.pack(seq, mv.nbytes)
            try:
                if mv.nbytes <= SMALL:
                    return stream.write(hdr + mv.tobytes())
                stream.write(hdr)
                return stream.write(mv)
            except Exception as e:  # noqa: BLE001 - tornado's StreamClosedError
                return _failed(self._gone(p, what, e))
        if comm is None:
            return _failed(self._gone(p, what))
        from distributed.protocol.serialize import Serialized

        # any other comm (ucx): one message, the payload as a raw frame
        return comm.write({"s": seq, "n": mv.nbytes, "d": Serialized({}, [mv])}, on_error="raise")

    def _recv(self, p: int, target: memoryview, seq: int, what: str):
        """An awaitable that receives message ``seq`` from ``p`` into ``target``."""
        comm = self._comms.get(p)
        stream = _stream(comm)
        if stream is not None:
            if target.nbytes <= SMALL:  # header and payload in one read, then checked and copied
                scratch = bytearray(_HDR.size + target.nbytes)
                try:
                    fut = stream.read_into(scratch)
                except Exception as e:  # noqa: BLE001
                    return _failed(self._gone(p, what, e))
                return self._check_small(p, fut, scratch, target, seq, what)
            return self._recv_large(p, stream, target, seq, what)
        if comm is None:
            return _failed(self._gone(p, what))
        return self._recv_message(p, comm, target, seq, what)

    async def _recv_large(self, p, stream, target, seq, what):
        hdr = bytearray(_HDR.size)
        await stream.read_into(hdr)
        rseq, nbytes = _HDR.unpack(hdr)
        if rseq != seq or nbytes != target.nbytes:
            raise self._mismatch(p, seq, target.nbytes, rseq, nbytes, what)
        await stream.read_into(target)  # straight into the destination array

    async def _recv_message(self, p, comm, target, seq, what):
        msg = await comm.read()
        msg = msg if isinstance(msg, dict) else {}
        frames = getattr(msg.get("d"), "frames", None)
        got = sum(memoryview(f).nbytes for f in frames) if frames is not None else -1
        if msg.get("s") != seq or got != target.nbytes or msg.get("n") != target.nbytes:
            raise self._mismatch(p, seq, target.nbytes, msg.get("s"), got, what)
        off = 0
        for f in frames:
            f = memoryview(f).cast("B")
            target[off:off + f.nbytes] = f
            off += f.nbytes

    # -- tear-down ------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close every connection (peers waiting on this rank see it closed) and the event loop."""
        if self._closed:
            return
        self._closed = True

        async def shut():
            for c in list(self._comms.values()):
                c.abort()
            self._comms.clear()
            await self._stop_listener()

        try:
            self._loop.run_until_complete(asyncio.wait_for(shut(), 5))
        except Exception:  # noqa: BLE001 - best effort
            pass
        finally:
            self._loop.close()


async def _failed(exc):
    raise exc


def _tune(comm) -> None:
    """4 MiB socket buffers on a stream comm (a transpose's part to one peer is ~1 MiB at 64^3)."""
    import socket

    sock = getattr(_stream(comm), "socket", None)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
        except (AttributeError, OSError):
            pass


def _stream(comm):
    """The tornado ``IOStream`` under a ``tcp://`` / ``tls://`` comm (None for other comms): collectives read
    and write it directly, with their own 16-byte header, straight from and into the arrays."""
    stream = getattr(comm, "stream", None)
    return stream if stream is not None and hasattr(stream, "read_into") else None


def byte_view(a) -> memoryview:
    """A flat byte view of the contiguous array ``a`` (a copy first if it is not contiguous).

    Parameters
    ----------
    a : array_like
        A NumPy array.

    Returns
    -------
    memoryview
        1-D unsigned-byte view of its data.
    """
    return memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8))


__all__ = ["POLL_S", "Mesh", "RankAborted", "byte_view"]
