"""The ways a person starts a job: launch/, slurm/, docker/ (docs/deploy.md).

Fast and offline: no SLURM, no Docker, no MPI run. Shell syntax, #SBATCH headers, every hpc-pt flag the
scripts use against the CLI's own --help, usage errors, the command lines the scripts compose (with a fake
`mpiexec` / `srun` that records its arguments), and the Dockerfiles against the tree and pyproject.toml.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import stat
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest

from hpc_pt.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ["launch/mpi_local.sh", "launch/dask_local.sh", "launch/dask_scheduler.sh", "launch/demo.sh"]
SBATCH = ["slurm/reconstruct_cpu.sbatch", "slurm/reconstruct_gpu.sbatch", "slurm/simulate_and_reconstruct.sbatch"]
SHELL = LAUNCH + SBATCH + ["slurm/local_slurm.sh"]
DOCKERFILES = ["docker/Dockerfile", "docker/Dockerfile.gpu"]
SUBCOMMANDS = ("reconstruct", "simulate", "demo", "evaluate", "validate", "info")

# Flags (and choice values) being added to the CLI while these scripts were written. Each is accepted
# only while its feature is absent from `hpc-pt reconstruct --help`; once the feature is there (any of
# its flags or values appears), the scripts must use exactly the names the CLI has.
PENDING_FLAGS = {"--workers": "dask", "--scheduler": "dask", "--checkpoint-every": "checkpoint",
                 "--resume": "checkpoint"}
PENDING_CHOICES = {("--backend", "dask"): "dask"}


def run(args, env=None, **kw):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(args, capture_output=True, text=True, env=full_env, cwd=kw.pop("cwd", ROOT),
                          timeout=30, **kw)


# --- the CLI's own options, from its --help -----------------------------------------------------------

def cli_help(sub: str) -> str:
    out = io.StringIO()
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "1000"  # no wrapping inside a `{a,b}` choice list
    try:
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            cli_main([sub, "--help"])
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    return out.getvalue()


@pytest.fixture(scope="module")
def cli_options():
    """{subcommand: (set of flags, {flag: set of choices})} parsed from `hpc-pt SUB --help`."""
    options = {}
    for sub in SUBCOMMANDS:
        text = cli_help(sub)
        flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text))
        choices = {f: set(c.split(",")) for f, c in re.findall(r"(--[a-z][a-z0-9-]*) \{([^}]*)\}", text)}
        assert "--help" in flags and "--out" in flags | {"--out"}, text
        options[sub] = (flags, choices)
    return options


def landed_features(options) -> set[str]:
    flags, choices = options["reconstruct"]
    landed = set()
    if "dask" in choices.get("--backend", set()) or {"--workers", "--scheduler"} & flags:
        landed.add("dask")
    if any("checkpoint" in f or "resume" in f for f in flags):
        landed.add("checkpoint")
    return landed


# --- what the scripts pass to hpc-pt ------------------------------------------------------------------

INVOCATION = re.compile(r"(?:hpc-pt|hpc_pt\.cli)\s+(" + "|".join(SUBCOMMANDS) + r")\b(.*)")
ARRAYS = {"recon_args": "reconstruct", "sim_args": "simulate"}


def used_options(path: Path) -> list[tuple[str, str, str | None]]:
    """(subcommand, flag, literal value or None) for every hpc-pt option written in a shell script, in
    commands, in the recon_args / sim_args arrays, and in comments (the examples must be right too)."""
    text = path.read_text()
    found = []

    def tokens(sub, rest):
        words = rest.split()
        for i, w in enumerate(words):
            m = re.fullmatch(r"(--[a-z][a-z0-9-]*)(?:=(\S+))?", w.strip("`'\"[]()"))
            if m:
                nxt = words[i + 1].strip("`'\"[]()") if i + 1 < len(words) else ""
                value = m.group(2) or (nxt if re.fullmatch(r"[a-z][a-z0-9-]*", nxt) else None)
                found.append((sub, m.group(1), value))

    for line in text.replace("\\\n", " ").splitlines():
        m = INVOCATION.search(line)
        if m:
            tokens(m.group(1), m.group(2))
    for name, sub in ARRAYS.items():
        for body in re.findall(name + r"\+?=\((.*?)\)", text, flags=re.S):
            tokens(sub, body.replace("\\\n", " "))
    return found


def load_dask_jobqueue_script():
    spec = importlib.util.spec_from_file_location("hpcpt_slurm_dask_jobqueue", ROOT / "slurm/dask_jobqueue.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_option(options, landed, where, sub, flag, value, pending_used):
    flags, choices = options[sub]
    if flag in flags:
        if value is not None and flag in choices and value not in choices[flag]:
            feature = PENDING_CHOICES.get((flag, value))
            assert feature and feature not in landed, (
                f"{where}: `{flag} {value}` is not a choice of hpc-pt {sub} {flag} {sorted(choices[flag])}")
            pending_used.add(f"{flag} {value}")
        return
    feature = PENDING_FLAGS.get(flag) if sub == "reconstruct" else None
    assert feature is not None, f"{where}: hpc-pt {sub} has no option {flag}"
    assert feature not in landed, (
        f"{where}: {flag} is not in `hpc-pt {sub} --help`, but the {feature} feature has landed under "
        f"other names: {sorted(f for f in flags if f not in {'--help'})}; use those")
    pending_used.add(flag)


def test_every_hpc_pt_option_in_the_scripts_exists(cli_options):
    landed = landed_features(cli_options)
    pending_used, seen = set(), set()
    for rel in SHELL:
        for sub, flag, value in used_options(ROOT / rel):
            seen.add((rel, sub, flag))
            check_option(cli_options, landed, rel, sub, flag, value, pending_used)
    script = load_dask_jobqueue_script()
    argv = script.hpc_pt_command("d.h5", "o.zarr", "tcp://h:8786", 3, ["--method", "apt"])
    i = argv.index("reconstruct")
    assert argv[i - 2:i] == ["-m", "hpc_pt.cli"], argv
    for j, word in enumerate(argv[i + 1:], start=i + 1):
        if word.startswith("--"):
            value = argv[j + 1] if j + 1 < len(argv) and not argv[j + 1].startswith("--") else None
            seen.add(("slurm/dask_jobqueue.py", "reconstruct", word))
            check_option(cli_options, landed, "slurm/dask_jobqueue.py", "reconstruct", word, value, pending_used)
    # the parser really finds the scripts' options (not a vacuous pass)
    expected = {("launch/mpi_local.sh", "reconstruct", "--backend"), ("launch/dask_local.sh", "reconstruct", "--workers"),
                ("slurm/reconstruct_cpu.sbatch", "reconstruct", "--iterations"),
                ("slurm/reconstruct_cpu.sbatch", "reconstruct", "--checkpoint-every"),
                ("slurm/reconstruct_gpu.sbatch", "reconstruct", "--device"),
                ("slurm/simulate_and_reconstruct.sbatch", "simulate", "--angles"),
                ("slurm/simulate_and_reconstruct.sbatch", "evaluate", "--truth"),
                ("slurm/dask_jobqueue.py", "reconstruct", "--scheduler")}
    assert expected <= seen, expected - seen
    if pending_used:
        warnings.warn(f"scripts use options the CLI does not have yet: {sorted(pending_used)}", stacklevel=1)


def test_option_checker_rejects_unknown_and_renamed_flags():
    before = {"reconstruct": ({"--help", "--out", "--backend", "--method"},
                              {"--backend": {"serial", "mpi"}, "--method": {"apt", "gd"}}),
              "simulate": ({"--help", "--out"}, {})}
    after = {"reconstruct": ({"--help", "--out", "--backend", "--method", "--n-workers", "--scheduler-address"},
                             {"--backend": {"serial", "mpi", "dask"}, "--method": {"apt", "gd"}})}
    assert landed_features(before) == set() and landed_features(after) == {"dask"}
    pending = set()
    check_option(before, set(), "x", "reconstruct", "--workers", None, pending)  # pending: accepted
    check_option(before, set(), "x", "reconstruct", "--backend", "dask", pending)
    assert pending == {"--workers", "--backend dask"}
    check_option(after, {"dask"}, "x", "reconstruct", "--backend", "dask", set())
    with pytest.raises(AssertionError, match="no option --itterations"):
        check_option(before, set(), "x", "reconstruct", "--itterations", None, set())
    with pytest.raises(AssertionError, match="not a choice"):
        check_option(before, set(), "x", "reconstruct", "--method", "sirt", set())
    # the Dask backend landed as --n-workers: a script still saying --workers fails
    with pytest.raises(AssertionError, match="landed under other names"):
        check_option(after, {"dask"}, "x", "reconstruct", "--workers", None, set())
    with pytest.raises(AssertionError, match="has no option --workers"):
        check_option(before, set(), "x", "simulate", "--workers", None, set())  # pending only for reconstruct


# --- shell scripts --------------------------------------------------------------------------------------

@pytest.mark.parametrize("rel", SHELL)
def test_shell_syntax_and_strict_mode(rel):
    path = ROOT / rel
    res = run(["bash", "-n", str(path)])
    assert res.returncode == 0, res.stderr
    text = path.read_text()
    assert text.startswith("#!"), rel
    assert "set -euo pipefail" in text, rel
    if rel.endswith(".sh"):
        assert path.stat().st_mode & stat.S_IXUSR, f"{rel} is not executable"


@pytest.mark.parametrize("rel", SBATCH)
def test_sbatch_header_and_srun(rel):
    lines = (ROOT / rel).read_text().splitlines()
    # sbatch reads #SBATCH lines only up to the first command: all of them must be in the leading block
    first_command = next(i for i, l in enumerate(lines) if l.strip() and not l.lstrip().startswith("#"))
    directives = [l for l in lines[:first_command] if l.startswith("#SBATCH")]
    late = [l for l in lines[first_command:] if l.lstrip().startswith("#SBATCH")]
    assert not late, f"{rel}: #SBATCH after the first command is ignored by sbatch: {late}"
    names = {re.match(r"#SBATCH\s+(--[a-z-]+)", d).group(1) for d in directives}
    assert {"--job-name", "--time", "--output"} <= names, names
    assert names & {"--ntasks", "--ntasks-per-node"}, names
    commands = [l for l in lines[first_command:] if not l.lstrip().startswith("#")]
    assert any(re.search(r"(^|[\s(\"])srun\s", l) for l in commands), f"{rel} does not use srun"
    assert any("-m mpi4py -m hpc_pt.cli reconstruct" in l for l in commands), rel
    for var in ("DATA", "OUT", "METHOD", "ITERATIONS", "CONFIG"):
        assert re.search(rf"^#\s+{var}\s", "\n".join(lines[:first_command]), flags=re.M), f"{rel}: {var} undocumented"


def test_gpu_sbatch_one_rank_per_gpu():
    text = (ROOT / "slurm/reconstruct_gpu.sbatch").read_text()
    gpus = re.search(r"^#SBATCH --gres=gpu:(\d+)$", text, flags=re.M)
    tasks = re.search(r"^#SBATCH --ntasks-per-node=(\d+)$", text, flags=re.M)
    assert gpus and tasks and gpus.group(1) == tasks.group(1)
    assert '--device "$DEVICE"' in text and "DEVICE=${DEVICE:-gpu}" in text


@pytest.mark.parametrize("rel", LAUNCH[:3] + ["slurm/local_slurm.sh"])
def test_usage_error_without_arguments(rel):
    res = run(["bash", rel])
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert res.stderr.startswith("usage: "), res.stderr


def test_mpi_local_bad_arguments(tmp_path):
    res = run(["bash", "launch/mpi_local.sh", "two", "x.h5", "o.zarr"])
    assert res.returncode == 2 and "error: P must be a positive integer" in res.stderr
    res = run(["bash", "launch/mpi_local.sh", "2", str(tmp_path / "missing.h5"), "o.zarr"])
    assert res.returncode == 2 and "does not exist" in res.stderr


def fake(tmp_path, name, body):
    exe = tmp_path / "bin" / name
    exe.parent.mkdir(exist_ok=True)
    exe.write_text("#!/bin/bash\n" + body)
    exe.chmod(0o755)
    return exe


def test_mpi_local_command_line(tmp_path):
    pytest.importorskip("mpi4py")
    log = tmp_path / "mpiexec.log"
    mpiexec = fake(tmp_path, "mpiexec", f'printf "%s\\n" "$@" > {log}\n')
    data = tmp_path / "d.h5"
    data.write_bytes(b"")
    res = run(["bash", "launch/mpi_local.sh", "3", str(data), "o.zarr", "--method", "gd", "--iterations", "7"],
              env={"MPIEXEC": str(mpiexec), "PYTHON": sys.executable})
    assert res.returncode == 0, res.stderr
    assert log.read_text().split("\n")[:-1] == [
        "-n", "3", sys.executable, "-m", "mpi4py", "-m", "hpc_pt.cli", "reconstruct", str(data),
        "--backend", "mpi", "--out", "o.zarr", "--method", "gd", "--iterations", "7"]


def sbatch_env(tmp_path, **extra):
    data = tmp_path / "d.h5"
    data.write_bytes(b"")
    env = {"SLURM_JOB_ID": "42", "SLURM_NTASKS": "2", "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "n1",
           "SLURM_TASKS_PER_NODE": "2", "DATA": str(data), "SRUN_LOG": str(tmp_path / "srun.log"),
           "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "PYTHON": "python3"}
    for key in ("OUT", "METHOD", "ITERATIONS", "CONFIG", "EXTRA_ARGS", "FORCE", "CHECKPOINT_EVERY", "CHECKPOINT_DIR",
                "RESUME", "LAUNCHER", "MPI_PLUGIN", "DEVICE", "VENV", "SLURM_RESTART_COUNT"):
        env[key] = ""
    env.update(extra)
    return env


# A fake srun: records its arguments; a `python -c PROBE` (the MPI world check) prints WORLD.
FAKE_SRUN = """echo "$*" >> "$SRUN_LOG"
for a in "$@"; do [[ $a == -c ]] && { printf "%s\\n" ${WORLD:-$SLURM_NTASKS}; exit 0; }; done
exit 0
"""


@pytest.mark.parametrize("rel", ["slurm/reconstruct_cpu.sbatch", "slurm/reconstruct_gpu.sbatch"])
def test_sbatch_command_line(tmp_path, rel):
    fake(tmp_path, "srun", FAKE_SRUN)
    cfg = tmp_path / "c.toml"
    cfg.write_text("")
    env = sbatch_env(tmp_path, OUT="r.zarr", CONFIG=str(cfg), ITERATIONS="9", FORCE="1",
                     EXTRA_ARGS="--probe-refine --quiet", DEVICE="cpu")
    res = run(["bash", rel], env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    last = (tmp_path / "srun.log").read_text().splitlines()[-1]
    device = "--device cpu " if "gpu" in rel else ""
    assert last == (f"--mpi=pmi2 --kill-on-bad-exit=1 python3 -m mpi4py -m hpc_pt.cli reconstruct {env['DATA']} "
                    f"--backend mpi {device}--out r.zarr --config {cfg} --iterations 9 --force --probe-refine --quiet")
    assert "exit code 0" in res.stdout


def test_sbatch_defaults_and_failures(tmp_path):
    fake(tmp_path, "srun", FAKE_SRUN)
    rel = "slurm/reconstruct_cpu.sbatch"
    res = run(["bash", rel], env=sbatch_env(tmp_path))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "srun.log").read_text().splitlines()[-1].endswith(
        "reconstruct " + str(tmp_path / "d.h5") + " --backend mpi --out recon-42.zarr --method apt --iterations 50")
    res = run(["bash", rel], env=sbatch_env(tmp_path, SLURM_JOB_ID=""))
    assert res.returncode == 2 and "sbatch" in res.stderr
    res = run(["bash", rel], env=sbatch_env(tmp_path, DATA=""))
    assert res.returncode == 2 and "set DATA" in res.stderr
    # srun starting 1-rank worlds (an MPI without PMI support for the plugin) is caught before the run
    res = run(["bash", rel], env=sbatch_env(tmp_path, WORLD="1 1", LAUNCHER="srun"))
    assert res.returncode == 2 and "did not start one MPI world of 2 ranks" in res.stderr
    res = run(["bash", "slurm/reconstruct_gpu.sbatch"], env=sbatch_env(tmp_path, DEVICE="tpu"))
    assert res.returncode == 2 and "DEVICE must be gpu or cpu" in res.stderr


def test_sbatch_resume_and_stale_mpich_segments(tmp_path):
    fake(tmp_path, "srun", FAKE_SRUN)
    rel = "slurm/reconstruct_cpu.sbatch"
    out = tmp_path / "r.zarr"
    # a restarted job (requeue, preemption) resumes when its checkpoint exists, and first removes the
    # stale MPICH segments of its earlier steps (names: FNV-1a of "JOBID.STEPID")
    (tmp_path / "r.zarr.ckpt").mkdir()
    res = run(["bash", rel], env=sbatch_env(tmp_path, OUT=str(out), CHECKPOINT_EVERY="5", SLURM_RESTART_COUNT="1"))
    assert res.returncode == 0, res.stderr
    text = (tmp_path / "srun.log").read_text()
    assert text.splitlines()[-1].endswith("--checkpoint-every 5 --resume") and "resuming from" in res.stdout
    cleanup = text.index("/dev/shm/mpich_")  # the cleanup step, before the MPI steps, with job id and steps
    assert re.search(r"^ 42 64$", text[cleanup:], flags=re.M) and text.index("-m mpi4py") > cleanup
    # not restarted, or no checkpoint: no --resume; RESUME=1 forces it, a bad value is an error
    (tmp_path / "srun.log").unlink()
    res = run(["bash", rel], env=sbatch_env(tmp_path, OUT=str(out), CHECKPOINT_EVERY="5"))
    assert res.returncode == 0 and (tmp_path / "srun.log").read_text().splitlines()[-1].endswith("--checkpoint-every 5")
    res = run(["bash", rel], env=sbatch_env(tmp_path, OUT=str(tmp_path / "s.zarr"), SLURM_RESTART_COUNT="2"))
    assert res.returncode == 0 and not (tmp_path / "srun.log").read_text().splitlines()[-1].endswith("--resume")
    res = run(["bash", rel], env=sbatch_env(tmp_path, RESUME="1"))
    assert res.returncode == 0 and (tmp_path / "srun.log").read_text().splitlines()[-1].endswith("--resume")
    res = run(["bash", rel], env=sbatch_env(tmp_path, RESUME="yes"))
    assert res.returncode == 2 and "RESUME must be 0, 1 or auto" in res.stderr


def test_stale_segment_names_match_mpich():
    """The cleanup's hash is MPICH's world_id: FNV-1a (32 bit) of the PMI kvs name, e.g. 25.1 -> 2cf7ac61
    (seen in /dev/shm after a requeued job 25 on the test bed, docs/deploy.md)."""
    text = (ROOT / "slurm/reconstruct_cpu.sbatch").read_text()
    code = re.search(r"^shm_cleanup='(.*?)^'$", text, flags=re.S | re.M).group(1)
    namespace = {}
    exec(code.split("removed = 0")[0].replace("import glob, os, sys", ""), namespace)  # the fnv1a function only
    assert format(namespace["fnv1a"]("25.1"), "x") == "2cf7ac61"
    assert format(namespace["fnv1a"]("7.1"), "x") == "15f470bb"
    assert (ROOT / "slurm/reconstruct_gpu.sbatch").read_text().count(code) == 1


def test_dask_jobqueue_lazy_import_and_hint(tmp_path):
    fake_pkg = tmp_path / "dask_jobqueue"
    fake_pkg.mkdir()
    (fake_pkg / "__init__.py").write_text("raise ImportError('no dask_jobqueue here')\n")
    env = {"PYTHONPATH": str(tmp_path)}
    res = run([sys.executable, "slurm/dask_jobqueue.py", "--help"], env=env)
    assert res.returncode == 0 and "--workers" in res.stdout
    res = run([sys.executable, "slurm/dask_jobqueue.py", "README.md", "--out", "o.zarr", "--workers", "2",
               "--dry-run"], env=env)
    assert res.returncode == 2
    assert res.stderr.strip() == ('error: dask-jobqueue is not installed; pip install dask-jobqueue ".[dask]" from the '
                                  'hpc-pt checkout')
    res = run([sys.executable, "slurm/dask_jobqueue.py", "README.md", "--out", "o.zarr"], env=env)
    assert res.returncode == 2 and "--workers" in res.stderr


# --- Dockerfiles ------------------------------------------------------------------------------------------

def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.mark.parametrize("rel", DOCKERFILES)
def test_dockerfile_copies_existing_paths_and_real_extras(rel):
    text = (ROOT / rel).read_text().replace("\\\n", " ")
    copies = [line.split()[1:-1] for line in text.splitlines() if line.startswith("COPY ")]
    sources = [s for srcs in copies for s in srcs if not s.startswith("--")]
    assert sources, rel
    for src in sources:
        assert (ROOT / src).exists(), f"{rel} copies {src}, which is not in the repository"
    meta = pyproject()["project"]
    assert meta["readme"] in sources, f"{rel}: the package build needs {meta['readme']}"
    assert "hpc_pt" in sources
    installs = re.findall(r'pip install "\.\[([a-z0-9,-]+)\]"', text)
    assert installs, f"{rel} does not pip install the checkout with extras"
    extras = set(meta["optional-dependencies"])
    for group in installs:
        assert set(group.split(",")) <= extras, f"{rel}: extras {group} not all in pyproject {sorted(extras)}"
    assert 'ENTRYPOINT ["hpc-pt"]' in text
    base = re.search(r"^FROM (\S+)", text, flags=re.M).group(1)
    if rel.endswith(".gpu"):
        assert re.fullmatch(r"nvidia/cuda:12\.[\d.]+-runtime-ubuntu[\d.]+", base), base
        assert "gpu" in installs[0].split(",") and "python3.11" in text
    else:
        assert base == "python:3.11-slim"
        assert "mpi" in installs[0].split(",")
    # the per-Dockerfile ignore list must not hide what the Dockerfile copies
    ignore = (ROOT / (rel + ".dockerignore")).read_text().splitlines()
    if "**" in ignore:
        for src in sources:
            assert f"!{src}" in ignore, f"{rel}.dockerignore hides {src}"


def test_deploy_doc_mentions_every_script():
    doc = (ROOT / "docs/deploy.md").read_text()
    files = [p.relative_to(ROOT).as_posix() for d in ("launch", "slurm", "docker") for p in (ROOT / d).iterdir()
             if p.is_file() and not p.name.endswith(".dockerignore")]
    assert len(files) >= 13
    missing = [f for f in files if f not in doc]
    assert not missing, f"docs/deploy.md does not mention {missing}"
