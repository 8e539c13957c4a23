#!/usr/bin/env bash
# A single-node SLURM cluster on this machine: munged + slurmctld + slurmd, everything (config,
# munge key, state, spool, logs, pid files) under one directory, nothing in /etc.
# For the tests and for trying deploy/slurm/ out; needs Debian's `slurm-wlm` (or slurmctld,
# slurmd, slurm-client) and `munge`:  apt-get install -y slurm-wlm munge
#
#   bash deploy/slurm/start-local-slurm.sh DIR        start; then: export SLURM_CONF=DIR/slurm.conf
#   bash deploy/slurm/start-local-slurm.sh stop DIR   cancel its jobs, stop its daemons
#
# The node gets this machine's CPUs and memory. Jobs are tracked without cgroups
# (proctrack/linuxproc, task/none), so it also runs in containers. Ports are free ones picked
# at start (or SLURMCTLD_PORT / SLURMD_PORT).
set -euo pipefail

die() { echo "start-local-slurm: $*" >&2; exit 1; }

stop() {
  local dir conf pid
  dir=$(cd "$1" && pwd) || die "no such directory: $1"
  conf="$dir/slurm.conf"
  if [[ -f $conf ]] && [[ -f $dir/run/slurmctld.pid ]]; then
    SLURM_CONF=$conf scancel --user="$(id -un)" 2>/dev/null || true
    for _ in $(seq 50); do  # jobs end within KillWait (5 s) of their SIGTERM
      [[ -z $(SLURM_CONF=$conf squeue -h -o %i 2>/dev/null) ]] && break
      sleep 0.2
    done
  fi
  for name in slurmd slurmctld munged; do
    local file="$dir/run/$name.pid"
    [[ -f $file ]] || continue
    pid=$(cat "$file")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$file"
  done
  # Job steps outlive slurmd when proctrack is linuxproc: end those of this cluster only
  # (they carry its SLURM_CONF in their environment).
  for env in /proc/[0-9]*/environ; do
    pid=${env#/proc/}; pid=${pid%/environ}
    [[ $pid == "$$" ]] && continue
    if tr '\0' '\n' 2>/dev/null <"$env" | grep -qxF "SLURM_CONF=$conf"; then
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
  echo "stopped the SLURM cluster in $dir"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
  for bin in munged slurmctld slurmd sbatch squeue sinfo scancel; do
    command -v "$bin" >/dev/null || die "$bin not found: apt-get install -y slurm-wlm munge"
  done
  mkdir -p "$1"
  local dir conf host user cpus mem limit ctld_port d_port
  dir=$(cd "$1" && pwd)
  conf="$dir/slurm.conf"
  [[ -f $dir/run/slurmctld.pid ]] && kill -0 "$(cat "$dir/run/slurmctld.pid")" 2>/dev/null \
    && die "a cluster is already running in $dir (stop it: $0 stop $dir)"
  mkdir -p "$dir"/{munge,state,spool,log,run}
  chmod 700 "$dir/munge"
  host=$(hostname -s)
  user=$(id -un)
  cpus=$(getconf _NPROCESSORS_ONLN)  # not nproc: it obeys OMP_NUM_THREADS, which tests set
  mem=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 ))
  limit=$(cat /sys/fs/cgroup/memory.max 2>/dev/null || echo max)
  [[ $limit =~ ^[0-9]+$ ]] && (( limit / 1048576 < mem )) && mem=$(( limit / 1048576 ))
  mem=$(( mem > 2048 ? mem - 1024 : mem ))  # leave room for the daemons and the client
  ctld_port=${SLURMCTLD_PORT:-$(free_port)}
  d_port=${SLURMD_PORT:-$(free_port)}

  # munge: a fresh key, its own socket
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$dir/munge/munge.key"
  munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
    --pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" \
    --seed-file="$dir/munge/munged.seed" || die "munged did not start: see $dir/log/munged.log"

  cat >"$conf" <<EOF
# Single-node test cluster written by deploy/slurm/start-local-slurm.sh
ClusterName=lczscale-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$d_port
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=5
MinJobAge=60
InactiveLimit=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

  export SLURM_CONF=$conf
  slurmctld -f "$conf" || die "slurmctld did not start: see $dir/log/slurmctld.log"
  slurmd -f "$conf" -N "$host" || die "slurmd did not start: see $dir/log/slurmd.log"
  local state=""
  for _ in $(seq 150); do
    state=$(sinfo -h -n "$host" -o %t 2>/dev/null || true)
    [[ $state == idle ]] && break
    sleep 0.2
  done
  if [[ $state != idle ]]; then
    tail -n 20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
    stop "$dir" >&2
    die "node $host is '${state:-unknown}', not idle, after 30 s (logs above)"
  fi
  echo "SLURM cluster up: node $host, $cpus CPUs, ${mem} MB, partition debug"
  echo "export SLURM_CONF=$conf"
  echo "stop it with: bash $(cd "$(dirname "$0")" && pwd)/stop-local-slurm.sh $dir"
}

case "${1:-}" in
  stop) [[ $# -eq 2 ]] || die "usage: $0 stop DIR"; stop "$2" ;;
  ""|-h|--help) sed -n '2,12p' "$0"; exit 64 ;;
  *) [[ $# -eq 1 ]] || die "usage: $0 DIR | $0 stop DIR"; start "$1" ;;
esac
