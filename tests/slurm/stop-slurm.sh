#!/usr/bin/env bash
# Stop what start-slurm.sh started (by its pid files): cancel the jobs, then slurmd and slurmctld.
set -uo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
STATE=${PATCHCLI_SLURM_DIR:-/var/spool/patchcli-slurm}
jobs=$(squeue -h -o %A 2>/dev/null | sort -u)
[ -n "$jobs" ] && scancel $jobs 2>/dev/null
for daemon in slurmd slurmctld; do
  pid=$(cat "$STATE/$daemon.pid" 2>/dev/null) || continue
  [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$daemon" ] || continue
  kill "$pid"
  for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  echo "stop-slurm: $daemon stopped"
done
exit 0
