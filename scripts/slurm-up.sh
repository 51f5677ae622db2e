#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the SLURM executor's tests: installs
# slurm-wlm, munge and libpmix-dev from Debian when missing, writes a slurm.conf for this host (as root, no
# accounting, no cgroups), and starts munged, slurmctld and slurmd. Idempotent: a running
# cluster is left as it is. Prints the partition's state when it is up.
#
#   scripts/slurm-up.sh        # then: sinfo, sbatch, squeue, scancel
set -euo pipefail
# Up: the node answers (a `*` after its state means it does not).
up() { sinfo -h -o '%T' 2>/dev/null | grep -qxE '(idle|mixed|allocated)'; }
# libpmix-dev: the PMIx library srun's `--mpi=pmix` loads (by its unversioned name) to start
# MPI ranks (a data-parallel job); slurmd must find it when it starts.
pmix() { dpkg -s libpmix-dev >/dev/null 2>&1; }
if command -v sinfo >/dev/null && up && pmix; then
  exit 0
fi
# One at a time (tests may call this together). The daemons started below must not inherit
# the lock's descriptor (`9>&-`), or they would hold it for as long as they run.
exec 9>/tmp/lors-slurm-up.lock
flock 9
if command -v sinfo >/dev/null && up && pmix; then
  exit 0
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! pmix; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge libpmix-dev >/dev/null
  pkill -x slurmd || true
fi
host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
conf=/etc/slurm/slurm.conf
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
cat > "$conf.new" <<CONF
ClusterName=lors-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
mv "$conf.new" "$conf"
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
# munged is healthy when it encodes a credential (a daemon whose socket is gone is not).
if ! munge -n >/dev/null 2>&1; then
  pkill -x munged || true
  runuser -u munge -- munged --force 9>&-
  for _ in $(seq 20); do munge -n >/dev/null 2>&1 && break; sleep 0.5; done
fi
# A test cluster keeps no state across starts (-c): a node saved as DOWN would wait long.
pgrep -x slurmctld >/dev/null || slurmctld -c 9>&-
pgrep -x slurmd >/dev/null || slurmd 9>&-
wait_up() {
  for _ in $(seq "$1"); do
    up && return 0
    sleep 1
  done
  return 1
}
if ! wait_up 15; then
  # Daemons that lost munge (or a node set DOWN meanwhile): start them again, node resumed.
  pkill -x slurmd || true
  pkill -x slurmctld || true
  sleep 1
  slurmctld -c 9>&-
  slurmd 9>&-
  sleep 2
  scontrol update NodeName="$host" State=RESUME 2>/dev/null || true
  if ! wait_up 45; then
    echo "slurm did not come up; logs in /var/log/slurm" >&2
    tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
    exit 1
  fi
fi
sinfo
