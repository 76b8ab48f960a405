#!/usr/bin/env bash
# slurm_local.sh — single-node, CPU-only SLURM cluster on the local machine.
#
#   sudo bash scripts/slurm_local.sh start    # install (if needed), configure, start, wait for node idle
#   sudo bash scripts/slurm_local.sh stop     # cancel all jobs, stop slurmd/slurmctld/slurmdbd/mariadbd/munged
#   bash scripts/slurm_local.sh status        # sinfo/squeue; exit 0 iff the cluster answers
#
# Tested on Debian 12 (slurm-wlm 22.05.8, munge 0.5.15) as root, without systemd
# (daemons are started directly, never through systemd/init scripts) and without
# cgroup delegation (proctrack/linuxproc + task/none, no cgroup.conf needed).
#
# Environment overrides:
#   SLURM_LOCAL_PARTITION   partition name               (default: debug)
#   SLURM_LOCAL_MEM_MARGIN  MiB kept back from RealMemory (default: max(512, 10% of RAM))
#   SLURM_LOCAL_KEEP_MUNGE  1 = `stop` leaves munged running (default: 0)
#   SLURM_LOCAL_TIMEOUT     seconds to wait for the node to become idle (default: 90)
#   SLURM_LOCAL_ACCOUNTING  1 = also run slurmdbd + MariaDB so that `sacct` works (default: 1).
#                           submitit polls `sacct` for job states; without it job.state is
#                           always UNKNOWN and a job that dies without writing its result
#                           makes job.result() wait forever. 0 = lighter, no sacct.
set -euo pipefail

PARTITION="${SLURM_LOCAL_PARTITION:-debug}"
WAIT_TIMEOUT="${SLURM_LOCAL_TIMEOUT:-90}"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd
LOG_DIR=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid
MUNGE_KEY=/etc/munge/munge.key
ACCOUNTING="${SLURM_LOCAL_ACCOUNTING:-1}"
DBD_CONF="$CONF_DIR/slurmdbd.conf"
DBD_PID=/run/slurmdbd.pid
MYSQL_PID=/run/mysqld/mysqld.pid
MYSQL_MARK=/run/slurm_local.mariadb   # exists iff this script started mariadbd

log() { echo "[slurm_local] $*" >&2; }
die() { echo "[slurm_local] ERROR: $*" >&2; exit 1; }

require_root() {
  [[ "$(id -u)" -eq 0 ]] || die "'$1' must be run as root (try: sudo bash $0 $1)"
}

node_name() {
  local n
  n="$(hostname -s 2>/dev/null || true)"
  [[ -n "$n" ]] || n=localhost
  echo "$n"
}

pid_alive() {  # pid_alive <pidfile> [expected-comm]
  local f="$1" pid
  [[ -r "$f" ]] || return 1
  pid="$(cat "$f" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  proc_running "$pid" || return 1
  if [[ -n "${2:-}" ]]; then
    [[ "$(cat /proc/"$pid"/comm 2>/dev/null)" == "$2" ]] || return 1
  fi
}

proc_running() {  # alive and not a zombie (some container init processes reap slowly)
  kill -0 "$1" 2>/dev/null || return 1
  [[ "$(awk '/^State:/{print $2}' /proc/"$1"/status 2>/dev/null)" != Z ]]
}

stop_pidfile() {  # stop_pidfile <pidfile> <comm> <name>
  local f="$1" comm="$2" name="$3" pid
  if pid_alive "$f" "$comm"; then
    pid="$(cat "$f")"
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do proc_running "$pid" || break; sleep 0.2; done
    if proc_running "$pid"; then
      log "$name did not exit after 20 s, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$f"
}

install_packages() {
  local missing=() p
  local pkgs=(munge slurmctld slurmd slurm-client)
  [[ "$ACCOUNTING" == 1 ]] && pkgs+=(slurmdbd mariadb-server)
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  command -v apt-get >/dev/null || die "packages missing (${missing[*]}) and apt-get not available"
  log "installing: ${missing[*]}"
  # Keep the package maintainer scripts from starting services with the
  # default (missing) configuration: deny service starts via policy-rc.d,
  # unless one is already in place.
  local created_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    created_policy=1
  fi
  local rc=0
  {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq &&
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
  } || rc=$?
  [[ $created_policy -eq 1 ]] && rm -f /usr/sbin/policy-rc.d
  [[ $rc -eq 0 ]] || die "apt-get install failed (rc=$rc)"
}

start_munge() {
  getent passwd munge >/dev/null || die "user 'munge' missing (munge package broken?)"
  install -d -m 0700 -o munge -g munge /etc/munge
  if [[ ! -s "$MUNGE_KEY" ]]; then
    log "creating munge key $MUNGE_KEY"
    if command -v mungekey >/dev/null; then
      mungekey --create --keyfile="$MUNGE_KEY" --force
    else
      dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
    fi
  fi
  chown munge:munge "$MUNGE_KEY"; chmod 0400 "$MUNGE_KEY"
  install -d -m 0755 -o munge -g munge /run/munge
  install -d -m 0700 -o munge -g munge /var/lib/munge /var/log/munge
  if pid_alive "$MUNGE_PID" munged && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    return 0
  fi
  log "starting munged"
  rm -f "$MUNGE_PID" /run/munge/munge.socket.2
  runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PID" || die "munged failed to start (see /var/log/munge/munged.log)"
  for _ in $(seq 1 50); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  die "munge credential round-trip failed"
}

start_mariadb() {
  if mariadb-admin ping --silent >/dev/null 2>&1; then return 0; fi   # already running
  install -d -m 0755 -o mysql -g mysql /run/mysqld
  if [[ ! -d /var/lib/mysql/mysql ]]; then
    log "initialising MariaDB data dir"
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  fi
  log "starting mariadbd"
  rm -f "$MYSQL_PID"
  setsid -f /usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql --skip-networking --innodb-lock-wait-timeout=900 \
    --pid-file="$MYSQL_PID" --log-error="$LOG_DIR/mariadb.log" </dev/null >/dev/null 2>&1
  touch "$MYSQL_MARK"
  for _ in $(seq 1 120); do
    mariadb-admin ping --silent >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  tail -n 20 "$LOG_DIR/mariadb.log" >&2 || true
  die "mariadbd did not come up"
}

install_if_changed() {  # install_if_changed <new file> <destination> <mode>: 0 if the destination changed, else 1
  chmod "$3" "$1"
  if [[ -f "$2" ]] && cmp -s "$1" "$2"; then
    rm -f "$1"; return 1
  fi
  mv "$1" "$2"
  return 0
}

write_dbd_conf() {  # returns 0 if content changed
  local tmp
  tmp="$(mktemp)"
  # MariaDB on Debian authenticates root@localhost through the unix socket, so
  # slurmdbd (running as root) needs no password.
  cat > "$tmp" <<EOF
# Generated by slurm_local.sh. Do not edit by hand.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=${DBD_PID}
LogFile=${LOG_DIR}/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
  install_if_changed "$tmp" "$DBD_CONF" 0600
}

start_slurmdbd() {
  if ! pid_alive "$DBD_PID" slurmdbd; then
    log "starting slurmdbd"
    rm -f "$DBD_PID"
    slurmdbd || die "slurmdbd failed to start (see $LOG_DIR/slurmdbd.log)"
  fi
  for _ in $(seq 1 60); do
    sacctmgr -n -P show cluster >/dev/null 2>&1 && break
    sleep 0.5
  done
  sacctmgr -n -P show cluster >/dev/null 2>&1 || { tail -n 20 "$LOG_DIR/slurmdbd.log" >&2; die "slurmdbd not responding"; }
  if [[ -z "$(sacctmgr -n -P show cluster local format=cluster 2>/dev/null)" ]]; then
    log "registering cluster 'local' in slurmdbd"
    sacctmgr -i add cluster local >/dev/null
  fi
}

write_conf() {  # writes $CONF; returns 0 if content changed, 1 otherwise
  local node cpus mem_total margin mem tmp
  node="$(node_name)"
  cpus="$(nproc)"
  mem_total="$(free -m | awk '/^Mem:/{print $2}')"
  margin="${SLURM_LOCAL_MEM_MARGIN:-$(( mem_total / 10 > 512 ? mem_total / 10 : 512 ))}"
  mem=$(( mem_total - margin ))
  (( mem >= 256 )) || mem=256
  install -d -m 0755 "$CONF_DIR" "$LOG_DIR"
  install -d -m 0755 "$STATE_DIR" "$SPOOL_DIR"
  local acct_lines
  if [[ "$ACCOUNTING" == 1 ]]; then
    acct_lines="JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1"
  else
    acct_lines="JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none"
  fi
  tmp="$(mktemp)"
  cat > "$tmp" <<EOF
# Generated by slurm_local.sh — single-node CPU-only cluster. Do not edit by hand.
ClusterName=local
SlurmctldHost=${node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s)
AuthInfo=cred_expire=10
MpiDefault=none
SwitchType=switch/none
# No systemd / cgroup delegation required:
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
${acct_lines}
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# fast periodic scheduling so that jobs whose BeginTime just passed (e.g. requeued ones) start quickly
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$(( mem / cpus ))
JobRequeue=1
ReturnToService=2
KillWait=10
MinJobAge=300
InactiveLimit=0
SlurmctldTimeout=60
SlurmdTimeout=60
StateSaveLocation=${STATE_DIR}
SlurmdSpoolDir=${SPOOL_DIR}
SlurmctldPidFile=${CTLD_PID}
SlurmdPidFile=${SLURMD_PID}
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd.log
MailProg=/bin/true
SlurmctldDebug=info
SlurmdDebug=info
NodeName=${node} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=${PARTITION} Nodes=${node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  install_if_changed "$tmp" "$CONF" 0644
}

cluster_up() {  # controller answers and slurmd is running
  pid_alive "$CTLD_PID" slurmctld && pid_alive "$SLURMD_PID" slurmd &&
    scontrol ping 2>/dev/null | grep -q 'is UP'
}

wait_node_idle() {
  local node state resumed=0
  node="$(node_name)"
  for _ in $(seq 1 $(( WAIT_TIMEOUT * 2 ))); do
    state="$(sinfo -h -N -n "$node" -o '%T' 2>/dev/null | head -1 || true)"
    case "$state" in
      idle|mixed|allocated|completing) log "node $node is $state"; return 0 ;;
      down*|drain*|fail*)
        if [[ $resumed -eq 0 ]]; then
          log "node $node is '$state' ($(sinfo -h -N -n "$node" -o '%E')), resuming"
          scontrol update NodeName="$node" State=RESUME 2>/dev/null || true
          resumed=1
        fi ;;
    esac
    sleep 0.5
  done
  log "node did not become idle within ${WAIT_TIMEOUT}s; state='${state:-?}'"
  sinfo -N -l >&2 || true
  tail -n 20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 || true
  return 1
}

cmd_start() {
  require_root start
  local t0=$SECONDS changed=0
  install_packages
  start_munge
  write_conf && changed=1
  if [[ $changed -eq 1 ]] && { pid_alive "$CTLD_PID" slurmctld || pid_alive "$SLURMD_PID" slurmd; }; then
    log "slurm.conf changed, restarting daemons"
    stop_pidfile "$SLURMD_PID" slurmd slurmd
    stop_pidfile "$CTLD_PID" slurmctld slurmctld
  fi
  if [[ "$ACCOUNTING" == 1 ]]; then
    start_mariadb
    if write_dbd_conf && pid_alive "$DBD_PID" slurmdbd; then
      log "slurmdbd.conf changed, restarting slurmdbd"
      stop_pidfile "$DBD_PID" slurmdbd slurmdbd
    fi
    start_slurmdbd
  else
    stop_pidfile "$DBD_PID" slurmdbd slurmdbd
    if [[ -e "$MYSQL_MARK" ]]; then stop_pidfile "$MYSQL_PID" mariadbd mariadbd; rm -f "$MYSQL_MARK"; fi
  fi
  if ! pid_alive "$CTLD_PID" slurmctld; then
    log "starting slurmctld"
    rm -f "$CTLD_PID"
    slurmctld || die "slurmctld failed to start (see $LOG_DIR/slurmctld.log)"
  fi
  for _ in $(seq 1 60); do scontrol ping 2>/dev/null | grep -q 'is UP' && break; sleep 0.5; done
  scontrol ping 2>/dev/null | grep -q 'is UP' || { tail -n 30 "$LOG_DIR/slurmctld.log" >&2; die "slurmctld not responding"; }
  if ! pid_alive "$SLURMD_PID" slurmd; then
    log "starting slurmd"
    rm -f "$SLURMD_PID"
    slurmd || die "slurmd failed to start (see $LOG_DIR/slurmd.log)"
  fi
  wait_node_idle || die "cluster not ready"
  log "cluster ready in $(( SECONDS - t0 )) s (partition '$PARTITION', node '$(node_name)')"
  sinfo
}

cmd_stop() {
  require_root stop
  if command -v scontrol >/dev/null && scontrol ping 2>/dev/null | grep -q 'is UP'; then
    if [[ -n "$(squeue -h -o %i 2>/dev/null)" ]]; then
      log "cancelling all jobs"
      local ids
      mapfile -t ids < <(squeue -h -o %i 2>/dev/null)
      [[ ${#ids[@]} -gt 0 ]] && scancel --quiet "${ids[@]}" 2>/dev/null || true
      for _ in $(seq 1 60); do [[ -z "$(squeue -h -o %i 2>/dev/null)" ]] && break; sleep 0.5; done
    fi
  fi
  stop_pidfile "$SLURMD_PID" slurmd slurmd
  stop_pidfile "$CTLD_PID" slurmctld slurmctld
  stop_pidfile "$DBD_PID" slurmdbd slurmdbd
  if [[ -e "$MYSQL_MARK" ]]; then
    stop_pidfile "$MYSQL_PID" mariadbd mariadbd
    rm -f "$MYSQL_MARK"
  fi
  if [[ "${SLURM_LOCAL_KEEP_MUNGE:-0}" != 1 ]]; then
    stop_pidfile "$MUNGE_PID" munged munged
  fi
  log "stopped"
}

cmd_status() {
  if command -v scontrol >/dev/null && cluster_up; then
    sinfo
    echo
    squeue
    return 0
  fi
  echo "slurm_local: not running"
  return 1
}

case "${1:-}" in
  start)  cmd_start ;;
  stop)   cmd_stop ;;
  status) cmd_status ;;
  restart) cmd_stop; cmd_start ;;
  *) echo "usage: $0 start|stop|status|restart" >&2; exit 2 ;;
esac
