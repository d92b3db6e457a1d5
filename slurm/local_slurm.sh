#!/usr/bin/env bash
# A single-node SLURM on this machine, for testing the sbatch scripts (not for production).
#
#   slurm/local_slurm.sh start     # write the config, start munged, slurmctld and slurmd
#   slurm/local_slurm.sh status    # sinfo + squeue
#   slurm/local_slurm.sh stop      # stop the three daemons started by `start`
#
# Needs root and the Debian/Ubuntu packages:  apt-get install -y slurm-wlm munge
# No systemd and no cgroups are needed: the daemons are started by hand, processes are tracked with
# proctrack/linuxproc, tasks are not bound (task/none), and there is no accounting database (job
# completions go to a text file, $STATE/jobcomp.log; `scontrol show job ID` has the exit code for
# MinJobAge seconds after a job ends).
#
# Environment (defaults in brackets):
#   SLURM_CONF   the config to write [/etc/slurm/slurm.conf]; an existing file not written by this
#                script is left alone unless FORCE=1
#   STATE        spool, state and log directory [/var/tmp/hpc-pt-slurm]
#   CPUS         CPUs the node offers [nproc]
#   FAKE_GPUS    number of fake GPUs (character devices /dev/fakegpuI, copies of /dev/null) declared
#                as gres gpu, to check GPU scheduling on a machine without GPUs [2]; 0 for none
#   PARTITION    partition name [debug]
set -euo pipefail

usage() { echo "usage: $(basename "$0") {start|stop|status}" >&2; exit 2; }
[[ $# -eq 1 ]] || usage

SLURM_CONF=${SLURM_CONF:-/etc/slurm/slurm.conf}
STATE=${STATE:-/var/tmp/hpc-pt-slurm}
CPUS=${CPUS:-$(nproc)}
FAKE_GPUS=${FAKE_GPUS:-2}
PARTITION=${PARTITION:-debug}
NODE=$(hostname -s)
MARK="# written by hpc-pt slurm/local_slurm.sh"

die() { echo "error: $*" >&2; exit 1; }

write_config() {
    local dir gres="" memory
    dir=$(dirname "$SLURM_CONF")
    if [[ -e $SLURM_CONF ]] && ! grep -qF "$MARK" "$SLURM_CONF" && [[ ${FORCE:-0} != 1 ]]; then
        die "$SLURM_CONF exists and was not written by this script; set FORCE=1 to replace it"
    fi
    mkdir -p "$dir" "$STATE/ctld" "$STATE/d" "$STATE/log"
    memory=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    if (( FAKE_GPUS > 0 )); then
        gres=" Gres=gpu:$FAKE_GPUS"
        : > "$dir/gres.conf"
        echo "$MARK" >> "$dir/gres.conf"
        for ((i = 0; i < FAKE_GPUS; i++)); do
            [[ -e /dev/fakegpu$i ]] || mknod -m 666 "/dev/fakegpu$i" c 1 3
            echo "NodeName=$NODE Name=gpu File=/dev/fakegpu$i" >> "$dir/gres.conf"
        done
    else
        rm -f "$dir/gres.conf"
    fi
    cat > "$SLURM_CONF" <<EOF
$MARK
ClusterName=hpcpt-local
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=pmi2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
ReturnToService=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/jobcomp.log
MinJobAge=3600
NodeName=$NODE CPUs=$CPUS RealMemory=$memory$gres State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    echo "wrote $SLURM_CONF${gres:+ and $dir/gres.conf}"
}

start() {
    [[ $(id -u) == 0 ]] || die "run as root (the daemons and the config need it)"
    for exe in munged slurmctld slurmd; do
        command -v "$exe" > /dev/null || die "$exe not found; apt-get install -y slurm-wlm munge"
    done
    write_config
    export SLURM_CONF
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    [[ -s /etc/munge/munge.key ]] || die "/etc/munge/munge.key missing; run mungekey (or create-munge-key) first"
    if ! pgrep -u munge -x munged > /dev/null; then
        runuser -u munge -- munged
    fi
    running "$STATE/slurmctld.pid" || slurmctld
    running "$STATE/slurmd.pid" || slurmd
    for _ in $(seq 30); do
        if sinfo -h -N -o %t 2> /dev/null | grep -qE '^(idle|mix|alloc)'; then
            sinfo
            return 0
        fi
        sleep 1
    done
    sinfo || true
    die "the node did not become idle within 30 s; see $STATE/log/slurmctld.log and slurmd.log"
}

running() {  # running PIDFILE: is the process in PIDFILE alive?
    [[ -f $1 ]] && kill -0 "$(cat "$1")" 2> /dev/null
}

stop_pidfile() {  # stop_pidfile NAME PIDFILE
    local pid
    if [[ -f $2 ]] && pid=$(cat "$2") && kill -0 "$pid" 2> /dev/null; then
        kill "$pid"
        for _ in $(seq 20); do kill -0 "$pid" 2> /dev/null || break; sleep 0.5; done
        echo "stopped $1 (pid $pid)"
    fi
    rm -f "$2"
}

stop() {
    stop_pidfile slurmd "$STATE/slurmd.pid"
    stop_pidfile slurmctld "$STATE/slurmctld.pid"
    stop_pidfile munged /run/munge/munged.pid
}

case $1 in
    start) start ;;
    stop) stop ;;
    status) export SLURM_CONF; sinfo; squeue ;;
    *) usage ;;
esac
