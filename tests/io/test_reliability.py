"""Reliability of every write: outputs never damage inputs, full disks and other write failures leave
nothing behind and one line, and ``--resume`` completes a run killed at any moment (issue 11, items 1-3).

Write failures are tested twice: with a simulated ``ENOSPC`` raised part-way through each writer
(everywhere), and on real small tmpfs file systems (only as root, where ``mount -t tmpfs`` works)."""
from __future__ import annotations

import errno
import glob
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hpc_pt.cli import main
from hpc_pt.errors import InputError
from hpc_pt.io import read_volume

SMALL = ["--size", "24", "--angles", "3", "--probe-size", "12", "--probe-fwhm", "5", "--step", "6", "--quiet"]
RECON = ["--iterations", "2", "--quiet"]
#: the names a run's temporaries have (store, replaced store, figure, checkpoint parts)
TEMPORARY = ("*.tmp-*", ".*.tmp-*", "*.old-*", "*.partial", "LATEST.tmp", "*.npz.tmp", "*.json.tmp", ".*.probe*")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("rel") / "good.h5"
    assert main(["simulate", *SMALL, "--out", str(out)]) == 0
    return out


def digest(path) -> str:
    """sha256 over a file, or over every file (names and bytes) of a folder."""
    h = hashlib.sha256()
    p = str(path)
    if os.path.isdir(p):
        for root, dirs, files in os.walk(p):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                h.update(os.path.relpath(full, p).encode())
                with open(full, "rb") as fh:
                    h.update(fh.read())
    else:
        with open(p, "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()


def temporaries(folder) -> list[str]:
    found = []
    for pattern in TEMPORARY:
        found += glob.glob(os.path.join(glob.escape(str(folder)), "**", pattern), recursive=True)
    return sorted(found)


def one_line_error(capsys, argv, *words):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    err = [e for e in err if e.startswith("error:") or "Traceback" in e or not e.startswith(("apt:", "note:"))]
    assert code == 2, (code, err)
    assert len(err) == 1 and err[0].startswith("error: "), err
    for w in words:
        assert w.lower() in err[0].lower(), err[0]
    return err[0]


# ------------------------------------------------------------------ 1. never damage an input
def _refused(capsys, tmp_path, argv, protected, *words):
    before = {p: digest(p) for p in protected}
    listing = sorted(os.listdir(tmp_path))
    one_line_error(capsys, argv, *words)
    assert {p: digest(p) for p in protected} == before, "an input changed"
    assert sorted(os.listdir(tmp_path)) == listing, "a refused run wrote something"


def test_reconstruct_out_is_the_input(data, tmp_path, capsys):
    d = tmp_path / "good.h5"
    shutil.copy(data, d)
    _refused(capsys, tmp_path, ["reconstruct", str(d), *RECON, "--out", str(d), "--force"], [d],
             "is the input", "even with --force")


def test_reconstruct_out_is_the_input_through_links(data, tmp_path, capsys):
    d = tmp_path / "good.h5"
    shutil.copy(data, d)
    (tmp_path / "sym.zarr").symlink_to(d)
    os.link(d, tmp_path / "hard.zarr")
    for alias in ("sym.zarr", "hard.zarr"):
        _refused(capsys, tmp_path, ["reconstruct", str(d), *RECON, "--out", str(tmp_path / alias), "--force"],
                 [d], "is the input")


def test_reconstruct_out_contains_the_input(data, tmp_path, capsys):
    sub = tmp_path / "run"
    sub.mkdir()
    d = sub / "good.h5"
    shutil.copy(data, d)
    _refused(capsys, tmp_path, ["reconstruct", str(d), *RECON, "--out", str(sub), "--force"], [d], "contains")


def test_reconstruct_out_inside_an_input_folder(data, tmp_path, capsys):
    folder = tmp_path / "scan"
    folder.mkdir()
    shutil.copy(data, folder / "good.h5")
    _refused(capsys, tmp_path, ["reconstruct", str(folder), *RECON, "--out", str(folder / "r.zarr")],
             [folder], "lies inside")


def test_reconstruct_out_over_init_and_config(data, tmp_path, capsys):
    init = tmp_path / "u0.npy"
    np.save(init, np.zeros((24, 24, 24), dtype=np.complex64))
    _refused(capsys, tmp_path, ["reconstruct", str(data), *RECON, "--init", str(init), "--out", str(init),
                                "--force"], [init], "--init")
    cfg = tmp_path / "r.toml"
    cfg.write_text('method = "apt"\niterations = 2\n')
    _refused(capsys, tmp_path, ["reconstruct", str(data), "--quiet", "--config", str(cfg), "--out", str(cfg),
                                "--force"], [cfg], "--config")


def test_checkpoint_folder_never_holds_or_is_an_input_or_the_output(data, tmp_path, capsys):
    sub = tmp_path / "run"
    sub.mkdir()
    d = sub / "good.h5"
    shutil.copy(data, d)
    out = str(tmp_path / "r.zarr")
    _refused(capsys, tmp_path, ["reconstruct", str(d), *RECON, "--out", out, "--checkpoint-every", "1",
                                "--checkpoint-dir", str(sub)], [d], "checkpoint folder", "contains")
    _refused(capsys, tmp_path, ["reconstruct", str(d), *RECON, "--out", out, "--checkpoint-every", "1",
                                "--checkpoint-dir", out], [d], "is the checkpoint folder")


def test_simulate_out_over_its_config_or_probe_file(tmp_path, capsys):
    cfg = tmp_path / "sim.toml"
    cfg.write_text('phantom = "ellipsoids"\nsize = 16\nangles = 2\nprobe_size = 8\nprobe_fwhm = 3\nstep = 4\n')
    _refused(capsys, tmp_path, ["simulate", "--config", str(cfg), "--quiet", "--out", str(cfg), "--force"], [cfg],
             "--config")
    probe = tmp_path / "probe.npy"
    yy, xx = np.mgrid[-4:4, -4:4]
    np.save(probe, np.exp(-(yy ** 2 + xx ** 2) / 4.0).astype(np.complex64))
    _refused(capsys, tmp_path, ["simulate", "--size", "16", "--angles", "2", "--quiet", "--probe-kind", "file",
                                "--probe-file", str(probe), "--out", str(probe), "--force"], [cfg, probe],
             "--probe-file")


def test_convert_out_over_its_sources(tmp_path, capsys):
    rng = np.random.default_rng(0)
    frames = tmp_path / "frames.npy"
    np.save(frames, rng.random((2, 4, 8, 8)).astype(np.float32))
    pos = tmp_path / "positions.csv"
    np.savetxt(pos, rng.random((8, 2)) * 1e-7, delimiter=",")
    desc = tmp_path / "scan.toml"
    desc.write_text(textwrap.dedent("""\
        frames = "frames.npy"
        angles = [0.0, 90.0]
        angles_unit = "deg"
        positions = "positions.csv"
        positions_unit = "m"
        energy = "8 keV"
        detector_distance = "2 m"
        detector_pixel = "75 um"
        """))
    protected = [frames, pos, desc]
    for target, word in ((frames, "frames file"), (pos, "positions file"), (desc, "the source")):
        _refused(capsys, tmp_path, ["convert", str(desc), "--out", str(target), "--force"], protected, word)


def test_ptycho2d_out_over_the_data(data, tmp_path, capsys):
    d = tmp_path / "good.h5"
    shutil.copy(data, d)
    _refused(capsys, tmp_path, ["ptycho2d", str(d), "--iterations", "1", "--quiet", "--out", str(d), "--force"],
             [d], "is the input")


def test_demo_out_dir_keeps_what_else_it_holds(tmp_path, capsys, monkeypatch):
    """The demo writes only demo.h5, demo.zarr and demo.png into --out-dir, also with --force."""
    from hpc_pt import workflows

    monkeypatch.setattr(workflows, "DEMO_SIMULATION", dict(workflows.DEMO_SIMULATION, size=16, angles=3,
                                                           probe_size=8, probe_fwhm=3.0, step=4.0, field_pad=3))
    out = tmp_path / "demo"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "sub").mkdir()
    (out / "sub" / "data.h5").write_bytes(b"mine too")
    keep = [out / "notes.txt", out / "sub"]
    before = {p: digest(p) for p in keep}
    for extra in ([], ["--force"]):
        assert main(["demo", "--out-dir", str(out), "--iterations", "1", "--quiet", *extra]) == 0
    capsys.readouterr()
    assert {p: digest(p) for p in keep} == before
    assert sorted(os.listdir(out)) == ["demo.h5", "demo.png", "demo.zarr", "notes.txt", "sub"]


def test_overlap_relations(tmp_path):
    from hpc_pt.io.safety import overlap

    f = tmp_path / "a" / "in.h5"
    f.parent.mkdir()
    f.write_bytes(b"x")
    assert overlap(f, f) == "is"
    assert overlap(tmp_path / "a" / ".." / "a" / "in.h5", f) == "is"
    assert overlap(tmp_path / "a", f) == "contains"
    assert overlap(tmp_path, f) == "contains"
    assert overlap(tmp_path / "a" / "new.zarr", tmp_path / "a") == "lies inside"
    assert overlap(tmp_path / "a" / "x" / "y.zarr", tmp_path / "a") == "lies inside"
    assert overlap(tmp_path / "b.zarr", f) is None
    assert overlap(tmp_path / "a" / "other.zarr", f) is None, "a sibling of an input file is fine"
    assert overlap(f, tmp_path / "missing.h5") is None


# ------------------------------------------------------------------ 2. full disks and other write failures
def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _existing_result(data, tmp_path):
    out = tmp_path / "out.zarr"
    assert main(["reconstruct", str(data), *RECON, "--out", str(out)]) == 0
    return out, tmp_path / "out.png"


def _assert_space_line(line):
    assert "no space left" in line and "needs up to about" in line and "free" in line, line
    needed = int(line.split("needs up to about ")[1].split(" bytes")[0].replace(",", ""))
    assert needed > 24 ** 3 * 8, line  # at least the complex volume
    return needed


@pytest.mark.parametrize("where", ["begin", "rows", "consolidate", "figure", "commit"])
def test_enospc_while_writing_the_result(data, tmp_path, capsys, monkeypatch, where):
    """A full disk at each step of the result's write: one line with the bytes needed, no temporary left,
    and an existing result (--force) unchanged, store and figure."""
    import hpc_pt.io.safety as safety
    import hpc_pt.io.zarr_store as zs

    out, png = _existing_result(data, tmp_path)
    before = (digest(out), digest(png))
    if where == "begin":  # part-way through the metadata: the arrays exist, the attributes not yet
        monkeypatch.setattr(zs, "quantities", _enospc)
    elif where == "rows":
        real_rows = zs.write_volume_rows

        def rows(tmp, z0, r, next_row=None):
            real_rows(tmp, z0, r[: len(r) // 2], None)  # half the rows are on disk
            _enospc()
        monkeypatch.setattr(zs, "write_volume_rows", rows)
    elif where == "consolidate":
        monkeypatch.setattr(zs, "consolidate_volume", _enospc)
    elif where == "figure":
        def half(path, payload):
            with open(path, "wb") as fh:
                fh.write(payload[: len(payload) // 2])
            _enospc()
        monkeypatch.setattr(safety, "write_file", half)
    else:  # the figure's rename, after the store was moved into place: the move is undone
        real_replace = os.replace

        def replace(src, dst):
            if str(dst).endswith(".png"):
                _enospc()
            return real_replace(src, dst)
        monkeypatch.setattr(safety.os, "replace", replace)
    line = one_line_error(capsys, ["reconstruct", str(data), "--iterations", "3", "--quiet", "--out", str(out),
                                   "--force"])
    _assert_space_line(line)
    assert (digest(out), digest(png)) == before, "the existing result changed"
    assert temporaries(tmp_path) == []


def test_enospc_without_an_existing_result_leaves_nothing(data, tmp_path, capsys, monkeypatch):
    import hpc_pt.io.zarr_store as zs

    monkeypatch.setattr(zs, "consolidate_volume", _enospc)
    one_line_error(capsys, ["reconstruct", str(data), *RECON, "--out", str(tmp_path / "out.zarr")], "no space left")
    assert os.listdir(tmp_path) == []


def test_enospc_in_an_atomic_file_output(data, tmp_path, capsys, monkeypatch):
    """The single-file writers (ptycho2d's .npz here; simulate's and convert's CXI go through the same
    atomic_output): one line with the bytes written when the disk filled, no temporary, the old file kept."""
    out = tmp_path / "p.npz"
    out.write_bytes(b"an earlier result")

    def half(fh, **arrays):
        fh.write(b"x" * 1000)
        _enospc()
    monkeypatch.setattr(np, "savez", half)
    line = one_line_error(capsys, ["ptycho2d", str(data), "--iterations", "1", "--quiet", "--out", str(out),
                                   "--force"], "no space left", "1,000 bytes")
    assert "p.npz" in line
    assert os.listdir(tmp_path) == ["p.npz"] and out.read_bytes() == b"an earlier result"


def test_other_write_failures_remove_the_temporaries(data, tmp_path, monkeypatch):
    """A failure that is not a full disk is raised as it is, but still leaves no temporary."""
    import hpc_pt.io.zarr_store as zs
    from hpc_pt import reconstruct

    def broken(*_a, **_k):
        raise OSError(errno.EIO, "input/output error (injected)")
    monkeypatch.setattr(zs, "consolidate_volume", broken)
    with pytest.raises(OSError, match="injected"):
        reconstruct(str(data), out=str(tmp_path / "out.zarr"), iterations=2)
    assert os.listdir(tmp_path) == []


def test_enospc_on_one_rank_stops_every_rank(tmp_path, monkeypatch):
    """Three thread-ranks, the last one's rows hit a full disk: every rank raises (the others with a
    secondary error), the failing rank's line has the bytes, and no temporary is left."""
    import threading

    import hpc_pt.io.zarr_store as zs
    from hpc_pt import reconstruct
    from hpc_pt.simulate import SimulationConfig, simulate_dataset
    from threadcomm import ThreadComm, _Group

    ds = simulate_dataset(SimulationConfig(size=16, angles=4, probe_size=8, probe_fwhm=3, step=3, field_pad=3))
    real_rows = zs.write_volume_rows

    def rows(tmp, z0, r, next_row=None):
        if z0 > 0 and z0 + len(r) == 16:  # the last slab
            _enospc()
        return real_rows(tmp, z0, r, next_row)
    monkeypatch.setattr(zs, "write_volume_rows", rows)
    group, errors = _Group(3), [None] * 3

    def work(r):
        try:
            reconstruct(ds, out=str(tmp_path / "r.zarr"), comm=ThreadComm(group, r), method="apts", iterations=1,
                        init="zeros")
        except Exception as e:  # noqa: BLE001 - inspected below
            errors[r] = e
    threads = [threading.Thread(target=work, args=(r,)) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(isinstance(e, InputError) for e in errors), errors
    primary = [e for e in errors if not getattr(e, "secondary", False)]
    assert len(primary) == 1 and errors.index(primary[0]) == 2
    _assert_space_line(str(primary[0]))
    assert os.listdir(tmp_path) == []


def test_enospc_while_writing_a_checkpoint(data, tmp_path, capsys, monkeypatch):
    """A full disk in the second checkpoint: one line with the bytes, the unfinished checkpoint removed,
    LATEST still on the first one, which a resume then continues."""
    from hpc_pt.io import checkpoint as ckmod

    real_savez = np.savez
    calls = {"n": 0}

    def flaky(fh, **arrays):
        calls["n"] += 1
        if calls["n"] == 2:
            fh.write(b"partial")
            _enospc()
        return real_savez(fh, **arrays)
    monkeypatch.setattr(ckmod.np, "savez", flaky)
    out = tmp_path / "r.zarr"
    line = one_line_error(capsys, ["reconstruct", str(data), "--iterations", "3", "--quiet", "--out", str(out),
                                   "--checkpoint-every", "1"], "no space left", "--checkpoint-dir")
    assert "needs up to about" in line
    ck = tmp_path / "r.zarr.ckpt"
    assert (ck / "LATEST").read_text() == "iter-000001"
    assert sorted(os.listdir(ck)) == ["LATEST", "iter-000001"]
    assert temporaries(tmp_path) == [] and not out.exists()
    monkeypatch.setattr(ckmod.np, "savez", real_savez)
    assert main(["reconstruct", str(data), "--iterations", "3", "--quiet", "--out", str(out), "--resume"]) == 0


def test_commit_undoes_a_failed_move(tmp_path, monkeypatch):
    import hpc_pt.io.safety as safety

    (tmp_path / "old.zarr").mkdir()
    (tmp_path / "old.zarr" / "a").write_text("old store")
    (tmp_path / "old.png").write_text("old figure")
    (tmp_path / "new.zarr").mkdir()
    (tmp_path / "new.zarr" / "a").write_text("new store")
    (tmp_path / "new.png").write_text("new figure")
    moves = [(str(tmp_path / "new.zarr"), str(tmp_path / "old.zarr")),
             (str(tmp_path / "new.png"), str(tmp_path / "old.png"))]
    real_replace = os.replace

    def replace(src, dst):
        if dst.endswith(".png"):
            _enospc()
        return real_replace(src, dst)
    monkeypatch.setattr(safety.os, "replace", replace)
    with pytest.raises(OSError):
        safety.commit(moves, "t")
    assert (tmp_path / "old.zarr" / "a").read_text() == "old store"
    assert (tmp_path / "new.zarr" / "a").read_text() == "new store", "the new part is back at its temporary name"
    monkeypatch.setattr(safety.os, "replace", real_replace)
    safety.commit(moves, "t")
    assert (tmp_path / "old.zarr" / "a").read_text() == "new store"
    assert (tmp_path / "old.png").read_text() == "new figure"
    assert sorted(os.listdir(tmp_path)) == ["old.png", "old.zarr"]


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) -> a fresh tmpfs of that size under tmp_path; skipped unless root can mount one."""
    mounted = []

    def make(size: str):
        d = tmp_path / f"tmpfs-{size}-{len(mounted)}"
        d.mkdir()
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a small tmpfs needs root (the simulated ENOSPC tests cover the same paths)")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True,
                           text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); the simulated ENOSPC tests cover it")
        mounted.append(d)
        return d
    yield make
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


@pytest.mark.parametrize("size", ["300k", "450k"])
def test_real_small_tmpfs(data, tmpfs, capsys, size):
    """On a real full file system (300 KiB: the store does not fit; 450 KiB: the store fits, the figure
    not): exit 2, one line with the bytes needed (more than what the file system holds), nothing left."""
    d = tmpfs(size)
    line = one_line_error(capsys, ["reconstruct", str(data), *RECON, "--out", str(d / "out.zarr")])
    needed = _assert_space_line(line)
    assert needed > os.statvfs(d).f_blocks * os.statvfs(d).f_frsize
    assert os.listdir(d) == []


def test_real_small_tmpfs_keeps_the_old_result(data, tmpfs, capsys):
    d = tmpfs("700k")
    out = d / "out.zarr"
    assert main(["reconstruct", str(data), *RECON, "--out", str(out)]) == 0
    before = {p: digest(d / p) for p in os.listdir(d)}
    assert sorted(before) == ["out.png", "out.zarr"]
    one_line_error(capsys, ["reconstruct", str(data), "--iterations", "3", "--quiet", "--out", str(out), "--force"],
                   "no space left")
    assert {p: digest(d / p) for p in os.listdir(d)} == before


def test_real_small_tmpfs_checkpoints(data, tmpfs, capsys):
    """Checkpoints (about 0.8 MiB each here) on a tmpfs that holds one but not two: one line, the
    unfinished one removed, LATEST on the first."""
    d = tmpfs("1200k")
    ck = d / "ck"
    line = one_line_error(capsys, ["reconstruct", str(data), "--iterations", "4", "--quiet", "--out",
                                   str(d / "out.zarr"), "--checkpoint-every", "1", "--checkpoint-dir", str(ck)],
                          "no space left", "iter-000002", "--checkpoint-dir")
    assert "needs up to about" in line
    assert temporaries(d) == [] and not (d / "out.zarr").exists()
    assert sorted(os.listdir(ck)) == ["LATEST", "iter-000001"]
    assert (ck / "LATEST").read_text() == "iter-000001"


# ------------------------------------------------------------------ 3. resume after any kill
KILLER = textwrap.dedent("""\
    import os, signal, sys
    import numpy as np
    stage = os.environ["HPC_PT_TEST_KILL"]
    def die():
        os.kill(os.getpid(), signal.SIGKILL)
    if stage == "rows":  # half the rows of the final store are on disk
        import hpc_pt.io.zarr_store as zs
        real = zs.write_volume_rows
        def rows(tmp, z0, r, next_row=None):
            real(tmp, z0, r[: len(r) // 2], None)
            die()
        zs.write_volume_rows = rows
    elif stage == "figure":  # the store has been moved into place, the figure not yet
        real_replace = os.replace
        def replace(src, dst):
            if str(dst).endswith(".png"):
                die()
            return real_replace(src, dst)
        os.replace = replace
    elif stage == "checkpoint":  # half-way through the second checkpoint's file
        from hpc_pt.io import checkpoint as ck
        real_savez, calls = np.savez, [0]
        def savez(fh, **arrays):
            calls[0] += 1
            if calls[0] == 2:
                fh.write(b"partial")
                fh.flush()
                die()
            return real_savez(fh, **arrays)
        ck.np.savez = savez
    from hpc_pt.cli import main
    sys.exit(main(sys.argv[1:]))
    """)


def _cli(args, kill=None, tmp=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if kill is None:
        cmd = [sys.executable, "-m", "hpc_pt", *args]
    else:
        env["HPC_PT_TEST_KILL"] = kill
        script = tmp / "killer.py"
        script.write_text(KILLER)
        cmd = [sys.executable, str(script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    p = _cli(["reconstruct", str(data), "--iterations", "3", "--quiet", "--out", str(out)])
    assert p.returncode == 0, p.stderr
    return read_volume(out)[0], np.asarray(__import__("zarr").open_group(str(out), mode="r")["probe"][...])


@pytest.mark.parametrize("stage", ["rows", "figure", "checkpoint"])
def test_resume_after_kill_9(data, tmp_path, uninterrupted, stage):
    """SIGKILL inside the final store write, between the store's and the figure's move, or inside a
    checkpoint; the same command with --resume (no --force) completes, sweeps the dead run's temporaries,
    and equals an uninterrupted run bitwise (CPU)."""
    import zarr

    work = tmp_path / "w"
    work.mkdir()
    out = work / "z.zarr"
    args = ["reconstruct", str(data), "--iterations", "3", "--quiet", "--out", str(out), "--checkpoint-every", "1"]
    p = _cli(args, kill=stage, tmp=tmp_path)
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr[-2000:])
    left = temporaries(work)
    assert left, "the killed run left its temporaries (what --resume must sweep)"
    p = _cli(args + ["--resume"])
    assert p.returncode == 0, p.stderr[-2000:]
    assert "removed" in p.stderr and "temporary" in p.stderr
    assert temporaries(work) == [], temporaries(work)
    assert sorted(os.listdir(work)) == ["z.png", "z.zarr", "z.zarr.ckpt"]
    vol, _ = read_volume(out)
    assert np.array_equal(vol, uninterrupted[0]), "resumed result differs from the uninterrupted run"
    assert np.array_equal(np.asarray(zarr.open_group(str(out), mode="r")["probe"][...]), uninterrupted[1])
    if stage == "figure":  # a finished run resumed again: still no --force needed
        p = _cli(args + ["--resume"])
        assert p.returncode == 0, p.stderr[-2000:]
        assert np.array_equal(read_volume(out)[0], uninterrupted[0])


def test_resume_sweep_spares_inputs(tmp_path):
    from hpc_pt.io.safety import stale_temporaries, sweep

    out = tmp_path / "r.zarr"
    (tmp_path / "r.zarr.tmp-123").mkdir()
    (tmp_path / ".r.png.tmp-123").write_bytes(b"x")
    precious = tmp_path / "r.zarr.old-7"
    precious.write_bytes(b"an input that happens to look like a temporary")
    found = stale_temporaries(out, tmp_path / "r.png")
    assert len(found) == 3
    removed = sweep(found, {"the input": str(precious)})
    assert sorted(os.path.basename(p) for p in removed) == [".r.png.tmp-123", "r.zarr.tmp-123"]
    assert precious.read_bytes().startswith(b"an input")


MPI_ROWS_FULL = textwrap.dedent("""\
    import errno, os, sys
    from mpi4py import MPI
    import hpc_pt.io.zarr_store as zs
    real = zs.write_volume_rows
    def rows(tmp, z0, r, next_row=None):
        if MPI.COMM_WORLD.Get_rank() == 1:  # only this rank's disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(tmp, z0, r, next_row)
    zs.write_volume_rows = rows
    from hpc_pt.cli import main
    sys.exit(main(sys.argv[1:]))
    """)


def test_mpi_rank_with_a_full_disk(data, tmp_path):
    """Under mpiexec, rank 1's rows hit a full disk: every rank stops with exit 2 and one line from the job
    (rank 1's, with the bytes), the existing result (--force) is unchanged and no temporary is left."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    exe = here if os.access(here, os.X_OK) else shutil.which("mpiexec")
    assert exe, "mpiexec not found: install the test extra (pip install -e '.[test]', which brings mpich)"
    out = tmp_path / "r.zarr"
    assert main(["reconstruct", str(data), *RECON, "--out", str(out)]) == 0  # the result to be replaced
    args = ["reconstruct", str(data), "--backend", "mpi", "--method", "gd", "--iterations", "2", "--quiet",
            "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    before = (digest(out), digest(tmp_path / "r.png"))
    script = tmp_path / "rows_full.py"
    script.write_text(MPI_ROWS_FULL)
    p = subprocess.run(["timeout", "120", exe, "-n", "2", sys.executable, str(script), *args, "--force"],
                       capture_output=True, text=True, env=env, timeout=150)
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "rank 1 of 2" in errors[0], p.stderr[-2000:]
    _assert_space_line(errors[0])
    assert (digest(out), digest(tmp_path / "r.png")) == before
    assert temporaries(tmp_path) == []


def test_simulate_refuses_a_file_the_disk_has_no_room_for(tmp_path, capsys, monkeypatch):
    """HDF5 can crash the process when the disk fills mid-write (seen: exit 139 on a full tmpfs), so
    write_cxi compares its upper estimate with the free bytes first: one line, nothing written."""
    import hpc_pt.io.safety as safety

    monkeypatch.setattr(safety, "free_bytes", lambda path: 200_000)
    line = one_line_error(capsys, ["simulate", *SMALL, "--out", str(tmp_path / "d.h5")], "no space left")
    assert "needs up to about" in line and "200,000 bytes" in line
    assert os.listdir(tmp_path) == []


def test_simulate_on_a_real_full_tmpfs(tmpfs, capsys):
    d = tmpfs("300k")
    one_line_error(capsys, ["simulate", *SMALL, "--out", str(d / "d.h5")], "no space left")
    assert os.listdir(d) == []
