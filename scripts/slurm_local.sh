#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the SLURM tests (tests/test_slurm.py) and for trying
# `bash run_QPA.sh --launcher slurm` without a cluster (docs/CLUSTER.md). Needs root and Debian's slurmctld, slurmd,
# slurmdbd, munge and mariadb-server (.ci/run installs them). Everything lives in one directory, so the machine's
# /etc/slurm, /etc/munge and databases are left alone:
#
#   bash scripts/slurm_local.sh start    # a fresh cluster; prints `export SLURM_CONF=...` for the SLURM commands
#   bash scripts/slurm_local.sh status   # exit status 0 when it answers
#   bash scripts/slurm_local.sh stop     # cancels every job, stops every daemon, fails if a job process survived
#
# SLURM_LOCAL_DIR chooses the directory (default /tmp/qpa-slurm). The daemons use SLURM's default ports 6817-6819,
# so one such cluster runs per machine. The node has this machine's cores and memory; no cgroups. Partitions:
#   debug        the default
#   preemptible  its jobs give way to `urgent` ones: SIGTERM, then SIGKILL after GraceTime, then requeued
#   urgent       preempts preemptible jobs, as a cluster's high-priority partition does
# Accounting runs through slurmdbd on a private MariaDB, because sacct (which submitit polls for the state of
# every job) reads nothing else. `start` exits with status 3 when it cannot run here (not root, packages missing).
set -euo pipefail

dir="${SLURM_LOCAL_DIR:-/tmp/qpa-slurm}"
cluster=qpa
kill_wait_s=5  # SIGTERM to SIGKILL when a job is cancelled, requeued or reaches its time limit
grace_s=5  # SIGTERM to SIGKILL when a job is preempted
cred_expire_s=10  # how long a requeued job waits before it may start again (SLURM's default: 120 s)
# The scheduler passes every 2 s (default: 30 and 60 s), so that queued jobs start and preemptions end promptly.

usage() {
  echo "usage: bash scripts/slurm_local.sh start|stop|status   (directory: \$SLURM_LOCAL_DIR, default /tmp/qpa-slurm)" >&2
  exit 2
}

die() {
  echo "slurm_local: $*" >&2
  exit 1
}

unavailable() {
  echo "slurm_local: $*" >&2
  exit 3
}

running() {  # running <pid file>
  [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

# wait_for <seconds> <what> <command...>: retry the command every 0.5 s
wait_for() {
  local seconds=$1 what=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "slurm_local: $what did not come up in ${seconds} s; its log:" >&2
      tail -n 20 "$dir/log/$what.log" >&2 || true
      return 1
    fi
    sleep 0.5
  done
}

cluster_answers() {  # (sinfo retries for seconds when no slurmctld listens)
  running "$dir/run/slurmctld.pid" && SLURM_CONF="$dir/slurm.conf" sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'
}

start() {
  [[ $(id -u) -eq 0 ]] || unavailable "needs root (it starts munged, mariadbd and the SLURM daemons)"
  local missing=()
  for program in munged mungekey mariadbd mariadb-install-db slurmdbd slurmctld slurmd sbatch sacct sacctmgr; do
    command -v "$program" >/dev/null || missing+=("$program")
  done
  ((${#missing[@]} == 0)) || unavailable "missing ${missing[*]}: apt-get install slurmctld slurmd slurmdbd slurm-client munge mariadb-server"
  if cluster_answers; then
    echo "slurm_local: already running in $dir"
    echo "export SLURM_CONF=$dir/slurm.conf"
    return
  fi
  stop_all >/dev/null 2>&1 || true  # daemons of an earlier start that no longer answers
  trap 'echo "slurm_local: start failed; stopping what it started" >&2; stop_all >&2 || true' ERR
  rm -rf "$dir"/{munge,mysql,state,spool,log,run} "$dir/slurm.conf" "$dir/slurmdbd.conf"
  mkdir -p "$dir"/{munge,mysql,state,spool,log,run}
  chmod 700 "$dir/munge"

  mungekey --create --keyfile="$dir/munge/munge.key" --force
  munged --socket="$dir/munge/socket" --key-file="$dir/munge/munge.key" --pid-file="$dir/run/munged.pid" \
    --log-file="$dir/log/munged.log" --seed-file="$dir/munge/seed" --force
  wait_for 30 munged munge --socket="$dir/munge/socket" -n

  if ! mariadb-install-db --no-defaults --user=root --datadir="$dir/mysql" --auth-root-authentication-method=socket \
    --skip-test-db >"$dir/log/mariadb-install.log" 2>&1; then
    stop_all
    die "mariadb-install-db failed; see $dir/log/mariadb-install.log"
  fi
  setsid mariadbd --no-defaults --user=root --datadir="$dir/mysql" --socket="$dir/run/mysql.sock" \
    --pid-file="$dir/run/mariadbd.pid" --skip-networking --log-error="$dir/log/mariadbd.log" \
    --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 &
  wait_for 60 mariadbd mariadb-admin --no-defaults --socket="$dir/run/mysql.sock" ping

  local node
  node="$(slurmd -C | head -n 1)"
  cat >"$dir/slurm.conf" <<EOF
ClusterName=$cluster
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/socket,cred_expire=$cred_expire_s
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SchedulerParameters=sched_interval=2,bf_interval=2
KillWait=$kill_wait_s
MailProg=/bin/true
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePass=$dir/munge/socket
JobCompType=jobcomp/none
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=OFF
PartitionName=preemptible Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=$grace_s
PartitionName=urgent Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
EOF
  cat >"$dir/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$dir/munge/socket
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageUser=root
StorageLoc=slurm_acct_db
PidFile=$dir/run/slurmdbd.pid
LogFile=$dir/log/slurmdbd.log
EOF
  chmod 600 "$dir/slurmdbd.conf"
  # slurmdbd reads slurmdbd.conf beside $SLURM_CONF and reaches MariaDB through its private socket (libmariadb
  # reads MYSQL_UNIX_PORT)
  MYSQL_UNIX_PORT="$dir/run/mysql.sock" SLURM_CONF="$dir/slurm.conf" slurmdbd
  wait_for 60 slurmdbd env SLURM_CONF="$dir/slurm.conf" sacctmgr -n show cluster

  SLURM_CONF="$dir/slurm.conf" sacctmgr -i add cluster "$cluster" >/dev/null
  slurmctld -f "$dir/slurm.conf"
  slurmd -f "$dir/slurm.conf"
  wait_for 60 slurmctld cluster_answers
  trap - ERR
  echo "slurm_local: running in $dir (node: $node)"
  echo "export SLURM_CONF=$dir/slurm.conf"
}

# job_processes: processes of this cluster's jobs: their environment names its slurm.conf and a job id (a shell
# that merely exported SLURM_CONF has no job id)
job_processes() {
  local environ pid variables
  for environ in /proc/[0-9]*/environ; do
    pid="${environ#/proc/}"
    pid="${pid%/environ}"
    variables="$({ tr '\0' '\n' <"$environ"; } 2>/dev/null)" || continue
    if grep -qxF "SLURM_CONF=$dir/slurm.conf" <<<"$variables" && grep -q '^SLURM_JOB_ID=' <<<"$variables"; then
      echo "$pid"
    fi
  done
}

stop_daemon() {  # stop_daemon <name>: TERM, then KILL after 30 s
  local pid_file="$dir/run/$1.pid" pid
  running "$pid_file" || return 0
  pid="$(cat "$pid_file")"
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 60); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.5
  done
  kill -KILL "$pid" 2>/dev/null || true
}

stop_all() {
  [[ -d $dir ]] || return 0
  if cluster_answers; then
    local jobs
    jobs="$(SLURM_CONF="$dir/slurm.conf" squeue -h -o %A | sort -u | tr '\n' ' ')"
    if [[ -n ${jobs// /} ]]; then
      # shellcheck disable=SC2086  # one argument per job id
      SLURM_CONF="$dir/slurm.conf" scancel $jobs
      local deadline=$((SECONDS + 60))
      while [[ -n $(SLURM_CONF="$dir/slurm.conf" squeue -h -o %A) ]] && ((SECONDS < deadline)); do
        sleep 0.5
      done
    fi
  fi
  for daemon in slurmd slurmctld slurmdbd mariadbd munged; do
    stop_daemon "$daemon"
  done
  local left
  left="$(job_processes | tr '\n' ' ')"
  if [[ -n ${left// /} ]]; then
    echo "slurm_local: job processes outlived their jobs, killing them: $left" >&2
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
    return 1
  fi
}

case "${1:-}" in
  start) start ;;
  stop)
    stop_all
    echo "slurm_local: stopped"
    ;;
  status)
    if cluster_answers; then
      echo "slurm_local: running in $dir"
      echo "export SLURM_CONF=$dir/slurm.conf"
    else
      echo "slurm_local: not running"
      exit 1
    fi
    ;;
  *) usage ;;
esac
