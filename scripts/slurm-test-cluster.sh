#!/usr/bin/env bash
# A real single-node Slurm cluster from Debian's packages, for the tests.
#   scripts/slurm-test-cluster.sh start DIR   # prints the SLURM_CONF path once the node is idle
#   scripts/slurm-test-cluster.sh stop DIR
# Needs root (slurmd runs jobs as their users). OWB_SLURM_MIN_JOB_AGE sets MinJobAge (default 600: the tests
# read finished jobs from scontrol; one test lowers it on a cluster of its own). No accounting: finished jobs are read from
# `scontrol show job` and the job's own exit file.
set -euo pipefail
cmd=${1:?start|stop}
dir=${2:?directory}

stop() {
    for name in slurmd slurmctld munged; do
        [ -f "$dir/$name.pid" ] && kill "$(cat "$dir/$name.pid")" 2>/dev/null || true
    done
    sleep 0.5
    for name in slurmd slurmctld munged; do
        [ -f "$dir/$name.pid" ] && kill -9 "$(cat "$dir/$name.pid")" 2>/dev/null || true
    done
    rm -rf "$dir"
}

wait_for() {  # wait_for SECONDS COMMAND...
    local deadline=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.2
    done
}

start() {
    mkdir -p "$dir"/{spool/ctld,spool/d,log,munge,munge-run}
    chmod 755 "$dir"
    chown -R slurm: "$dir/spool/ctld" "$dir/log"
    chown munge: "$dir/munge" "$dir/munge-run"
    chmod 700 "$dir/munge"  # the key's directory; the socket's is world-readable: every user needs it
    chmod 755 "$dir/munge-run"
    # munge: a fresh key and a daemon on a private socket
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1 count=1024 status=none
    chown munge: "$dir/munge/munge.key"
    chmod 400 "$dir/munge/munge.key"
    runuser -u munge -- munged --key-file="$dir/munge/munge.key" --socket="$dir/munge-run/munge.socket" \
        --pid-file="$dir/munge-run/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/seed" --force
    cp "$dir/munge-run/munged.pid" "$dir/munged.pid"
    local node cpus mem
    node=$(hostname -s)
    cpus=$(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' | head -1)
    mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)
    local port=$((20000 + RANDOM % 20000))
    # A test holds a user's jobs between allocation (squeue says R) and their batch script by making hold/<user>:
    # the prolog waits while it is there (60 s at most). It always exits 0: a failed prolog drains the node.
    mkdir -p "$dir/hold"
    cat > "$dir/prolog.sh" <<PROLOG
#!/bin/sh
n=0
while [ -e "$dir/hold/\$SLURM_JOB_USER" ] && [ \$n -lt 300 ]; do sleep 0.2; n=\$((n + 1)); done
exit 0
PROLOG
    chmod 755 "$dir/prolog.sh"
    cat > "$dir/slurm.conf" <<CONF
ClusterName=owbtest
SlurmctldHost=$node
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge-run/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/spool/ctld
SlurmdSpoolDir=$dir/spool/d
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerParameters=batch_sched_delay=0
DefMemPerCPU=256
SchedulerType=sched/backfill
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
Prolog=$dir/prolog.sh
ReturnToService=2
MinJobAge=${OWB_SLURM_MIN_JOB_AGE:-600}
KillWait=10  # Slurm's default is 30. With 3, a TERM trap once did not write before the job ended, on a loaded CI machine
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$node CPUs=$cpus RealMemory=$mem Feature=owbtest,fast State=UNKNOWN
PartitionName=main Nodes=$node Default=YES MaxTime=60 State=UP
PartitionName=short Nodes=$node MaxTime=5 State=UP
CONF
    chmod 644 "$dir/slurm.conf"
    export SLURM_CONF=$dir/slurm.conf
    slurmctld -f "$SLURM_CONF"
    wait_for 15 scontrol ping || { cat "$dir/log/slurmctld.log" >&2; exit 1; }
    slurmd -f "$SLURM_CONF"
    wait_for 30 sh -c "sinfo -h -N -o %T | grep -qx idle" \
        || { tail -20 "$dir/log/slurmd.log" "$dir/log/slurmctld.log" >&2; exit 1; }
    echo "$SLURM_CONF"
}

case $cmd in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
