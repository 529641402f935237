#!/usr/bin/env bash
# A real one-node SLURM for the test suite: munged, slurmctld and slurmd on this machine,
# without systemd, cgroups or an accounting database. Needs root and apt (Debian/Ubuntu).
# Does nothing if a SLURM controller already answers and has an idle node.
# State and logs: $PATCHCLI_SLURM_DIR (default /var/spool/patchcli-slurm). Stop: stop-slurm.sh.
set -Eeuo pipefail
export PATH="$PATH:/usr/sbin:/sbin" LC_ALL=C
STATE=${PATCHCLI_SLURM_DIR:-/var/spool/patchcli-slurm}
CONF=/etc/slurm/slurm.conf
LOG=$STATE/log

fail() { echo "start-slurm: $1" >&2; for f in "${@:2}"; do [ -f "$f" ] && tail -n 20 "$f" >&2; done; exit 1; }
node_ready() { sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; }
wait_for() { for _ in $(seq "$1"); do eval "$2" && return 0; sleep 0.5; done; return 1; }

[ "$(id -u)" = 0 ] || fail "must run as root"
if command -v scontrol >/dev/null && scontrol ping 2>/dev/null | grep -q UP && node_ready; then
  echo "start-slurm: a controller is up with an idle node; using it"; exit 0
fi
mkdir -p "$LOG" "$STATE/ctld" "$STATE/d" /etc/slurm

# Packages, without letting their install scripts start services (no systemd here).
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  added_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; added_policy=1; fi
  packages="slurmctld slurmd slurm-client munge"
  apt-get install -y -q --no-install-recommends $packages >"$LOG/apt.log" 2>&1 ||
    { apt-get update -q >>"$LOG/apt.log" 2>&1 && apt-get install -y -q --no-install-recommends $packages >>"$LOG/apt.log" 2>&1; } ||
    { [ $added_policy = 1 ] && rm -f /usr/sbin/policy-rc.d; fail "apt-get install failed" "$LOG/apt.log"; }
  [ $added_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

# munge: a key readable by the munge user only, and its daemon running as that user.
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  id munge >/dev/null 2>&1 || useradd --system --no-create-home --user-group --shell /usr/sbin/nologin munge
  install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
  install -d -o munge -g munge -m 0755 /run/munge
  [ -s /etc/munge/munge.key ] || head -c 1024 /dev/urandom >/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
  runuser -u munge -- munged --force >"$LOG/munged.out" 2>&1 || fail "munged did not start" "$LOG/munged.out"
  wait_for 40 'munge -n 2>/dev/null | unmunge >/dev/null 2>&1' || fail "munge does not work" /var/log/munge/munged.log
fi

# One node: this machine, reached on 127.0.0.1 (its name need not resolve).
HOST=$(hostname -s)
MEMORY=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
cat >"$CONF" <<EOF
# Written by patchcli's tests/slurm/start-slurm.sh
ClusterName=patchcli-test
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=5
MinJobAge=300
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$MEMORY State=UNKNOWN
PartitionName=local Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
# slurmd 22.05 stops when it cannot detect a cgroup version; naming v1 skips the detection.
echo "CgroupPlugin=cgroup/v1" >/etc/slurm/cgroup.conf

pgrep -x slurmctld >/dev/null || slurmctld -i >"$LOG/slurmctld.out" 2>&1 || fail "slurmctld did not start" "$LOG/slurmctld.out" "$LOG/slurmctld.log"
wait_for 60 'scontrol ping 2>/dev/null | grep -q UP' || fail "slurmctld does not answer" "$LOG/slurmctld.log"
pgrep -x slurmd >/dev/null || slurmd -N "$HOST" >"$LOG/slurmd.out" 2>&1 || fail "slurmd did not start" "$LOG/slurmd.out" "$LOG/slurmd.log"
if ! wait_for 60 node_ready; then
  scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true  # down from an old state
  wait_for 60 node_ready || fail "node $HOST is not idle: $(sinfo -h -o %t)" "$LOG/slurmctld.log" "$LOG/slurmd.log"
fi
echo "start-slurm: up: node $HOST, $(nproc) CPUs, partition local"
