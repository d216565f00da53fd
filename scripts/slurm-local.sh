#!/usr/bin/env bash
# slurm-local.sh -- a real one-node SLURM cluster on this machine, for tests and CI.
#
#   bash scripts/slurm-local.sh up       start munge + slurmctld + slurmd; wait until the node is idle
#   bash scripts/slurm-local.sh status   print sinfo; exit 0 if the node is up (idle/mixed/allocated/completing),
#                                        else 1
#   bash scripts/slurm-local.sh down     stop only what `up` started; remove its state directory
#
# Why: the project's SLURM path (hydra/launcher=submitit_slurm, requeue on preemption) is only really tested
# against a real slurmctld. This gives one in seconds, with partition `debug`, on a Debian machine.
#
# Facts it relies on (checked on Debian 12, slurm-wlm 22.05.8, munge 0.5.15, as root):
#   - Debian's `slurm-wlm` and `munge` packages give slurmctld, slurmd, sinfo/srun/sbatch, munged, mungekey.
#     No systemd is needed: the daemons daemonise themselves and write pid files.
#   - munged runs as the `munge` user and refuses to start unless /etc/munge, /run/munge, /var/lib/munge and
#     /var/log/munge belong to it; /run/munge may not exist in a container, so it is created.
#   - With SlurmUser=root, proctrack/linuxproc, task/none and no accounting, neither cgroups nor slurmdbd are
#     needed (containers, gVisor). submitit then logs a harmless `sacct` warning on each poll.
#   - Under CR_Core_Memory a job without --mem gets DefMemPerCPU per CPU; without it, one job takes all the node's
#     memory and 1-CPU jobs run one at a time. DefMemPerCPU = RealMemory / CPUs lets every CPU run a job.
#   - RealMemory must not exceed what slurmd measures (`slurmd -C`), or the node drains: we leave headroom.
#   - A requeued job may only start again once its old credential has expired: AuthInfo=cred_expire (default 120 s)
#     is that wait. Slurm 22.05 rejects values below 5 s (it logs "AuthInfo=cred_expire=N invalid" and falls back
#     to 120). We use 10 s (measured: `scontrol requeue` to RUNNING again in 12-13 s; with 5 s, 6-7 s), which
#     leaves a busy CI machine time to launch a job before its credential expires; LNREPRO_SLURM_CRED_EXPIRE=5
#     gives the floor.
#   - `sinfo -h -o %T` prints the node state (idle, mixed, allocated; a trailing * means "not responding").
#   - A daemon keeps the file descriptors it was started with: one started while we hold the flock would hold
#     it forever, so daemons start with the lock's descriptor closed.
#
# Exit codes: 0 ok; 1 failed (the daemons' logs are printed); 3 cannot run here (not root and slurm/munge
# missing, or not root and the cluster is not up) -- tests skip on 3 with the printed reason.
#
# Everything it creates lives under $STATE_DIR (state, spool, logs, the PIDs of the daemons it started) plus
# /etc/slurm/slurm.conf (marked as ours; a foreign one is kept aside and put back by `down`).
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin # the daemons live in /usr/sbin, often not on a user's PATH

readonly STATE_DIR=${LNREPRO_SLURM_DIR:-/var/lib/lnrepro-slurm}
readonly SLURM_CONF=/etc/slurm/slurm.conf
readonly CONF_MARKER="# Written by lnrepro scripts/slurm-local.sh"
readonly LOCK_FILE=/run/lnrepro-slurm.lock
readonly CLUSTER_NAME=lnrepro
readonly PARTITION=debug
readonly CRED_EXPIRE=${LNREPRO_SLURM_CRED_EXPIRE:-10} # seconds; slurm 22.05: minimum 5, default 120 (see above)
readonly UP_TIMEOUT=60 # seconds to wait for the node to become idle
HOST=$(hostname)
readonly HOST

say() { echo "slurm-local: $*"; }
die() { say "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }
is_root() { [[ $(id -u) -eq 0 ]]; }

# is_alive PID NAME: PID is a live process called NAME -- not a zombie (a daemon that exited lingers as one
# until init reaps it, seconds under gVisor), not a reused PID.
is_alive() {
    [[ $(cat "/proc/$1/comm" 2>/dev/null) == "$2" ]] &&
        [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]
}

# PIDs of live processes with this exact name (empty when none).
running() {
    local pid
    for pid in $(pgrep -x "$1" 2>/dev/null); do
        if is_alive "$pid" "$1"; then echo "$pid"; fi
    done
}

# The node's state as sinfo reports it ("" when the controller does not answer).
node_state() {
    have sinfo || return 0
    timeout 15 sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n1 || true
}

node_is_up() {
    case "$(node_state)" in
        idle | mixed | allocated | completing) return 0 ;;
        *) return 1 ;;
    esac
}

cluster_is_up() {
    [[ -n $(running slurmctld) && -n $(running slurmd) ]] && node_is_up
}

# --- install ------------------------------------------------------------------------------------------------
ensure_packages() {
    local missing=()
    have slurmctld && have slurmd && have sinfo && have sbatch || missing+=(slurm-wlm)
    have munged && have mungekey || missing+=(munge)
    [[ ${#missing[@]} -eq 0 ]] && return 0
    if ! is_root; then
        say "not root and ${missing[*]} not installed: cannot start a local SLURM cluster"
        exit 3
    fi
    say "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# --- munge --------------------------------------------------------------------------------------------------
munge_works() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    [[ -f /etc/munge/munge.key ]] || mungekey --create
    mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
    chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
    chmod 0755 /run/munge
    if [[ -z $(running munged) ]]; then
        runuser -u munge -- /usr/sbin/munged 9>&-
        wait_for_pidfile /run/munge/munged.pid munged
    fi
    local i
    for ((i = 0; i < 20; i++)); do
        munge_works && return 0
        sleep 0.5
    done
    die "munged does not answer (see /var/log/munge/munged.log)"
}

# --- slurm.conf ---------------------------------------------------------------------------------------------
# write_slurm_conf CPUS MEM_MB: a one-node cluster on this host, partition `debug`.
write_slurm_conf() {
    local cpus=$1 mem_mb=$2
    local mem_per_cpu=$((mem_mb / cpus))
    mkdir -p "$(dirname "$SLURM_CONF")"
    if [[ -f $SLURM_CONF ]] && ! grep -qxF "$CONF_MARKER" "$SLURM_CONF"; then
        cp -p "$SLURM_CONF" "$STATE_DIR/slurm.conf.orig" # someone else's: `down` puts it back
    fi
    cat >"$SLURM_CONF.tmp" <<EOF
$CONF_MARKER
# A one-node cluster for tests and CI; \`slurm-local.sh down\` removes it.
ClusterName=$CLUSTER_NAME
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=$CRED_EXPIRE
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$mem_per_cpu
# requeue (scontrol requeue, submitit's preemption handling) and quick turnover
JobRequeue=1
ReturnToService=2
KillWait=5
MinJobAge=60
# A requeued job becomes eligible at its BeginTime (requeue + cred_expire + 1 s), but only a scheduler pass starts
# it: the main scheduler's periodic pass is every 60 s and backfill's every 30 s, so without this a requeued
# job waits up to 30 s more. Passes over one node and a few jobs are cheap.
SchedulerParameters=bf_interval=1,sched_interval=2
MailProg=/bin/true
# state, spool, pids and logs: all under $STATE_DIR
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/run/slurmctld.pid
SlurmdPidFile=$STATE_DIR/run/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
NodeName=$HOST CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$SLURM_CONF.tmp" "$SLURM_CONF"
}

# Memory for slurm in MB: MemTotal less 10% (at least 512 MB) headroom.
node_memory_mb() {
    local total_mb headroom
    total_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
    headroom=$((total_mb / 10))
    ((headroom < 512)) && headroom=512
    echo $((total_mb - headroom))
}

# --- daemons ------------------------------------------------------------------------------------------------
wait_for_pidfile() { # FILE NAME
    local i
    for ((i = 0; i < 40; i++)); do
        [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null && return 0
        sleep 0.25
    done
    show_logs
    die "$2 did not start"
}

# start_daemon NAME PIDFILE CMD...: start it unless one runs already; record its PID as ours.
start_daemon() {
    local name=$1 pidfile=$2
    shift 2
    if [[ -n $(running "$name") ]]; then
        [[ -f $STATE_DIR/ours/$name ]] || say "$name was already running (not ours: left alone)"
        return 0
    fi
    rm -f "$pidfile"
    "$@" 9>&- # a daemon must not inherit (and so hold) our lock
    wait_for_pidfile "$pidfile" "$name"
    cat "$pidfile" >"$STATE_DIR/ours/$name"
}

show_logs() {
    local f
    for f in "$STATE_DIR"/log/*.log /var/log/munge/munged.log; do
        [[ -f $f ]] || continue
        echo "--- $f (last 20 lines)" >&2
        tail -n 20 "$f" >&2
    done
}

# stop_ours NAME: stop the daemon `up` started (if the recorded PID is still that daemon) and wait for it.
stop_ours() {
    local name=$1 record="$STATE_DIR/ours/$1" pid i
    [[ -f $record ]] || return 0
    pid=$(cat "$record")
    if is_alive "$pid" "$name"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 60; i++)); do
            is_alive "$pid" "$name" || break
            sleep 0.5
        done
        if is_alive "$pid" "$name"; then
            say "$name ($pid) ignored SIGTERM for 30 s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        say "stopped $name ($pid)"
    fi
    rm -f "$record"
}

lock() { # serialise concurrent up/down (parallel test workers)
    exec 9>"$LOCK_FILE"
    flock -w 120 9 || die "another slurm-local.sh holds $LOCK_FILE"
}

# --- subcommands --------------------------------------------------------------------------------------------
cmd_up() {
    if cluster_is_up; then
        say "already up (node $HOST, $(node_state))"
        return 0
    fi
    ensure_packages
    if ! is_root; then
        say "not root: cannot start a local SLURM cluster"
        exit 3
    fi
    lock
    cluster_is_up && { say "already up (node $HOST, $(node_state))"; return 0; }
    local t0=$SECONDS cpus mem_mb
    cpus=$(nproc)
    mem_mb=$(node_memory_mb)

    mkdir -p "$STATE_DIR"/{state,spool,run,log,ours}
    if [[ -z $(running munged) ]]; then
        start_munge
        cat /run/munge/munged.pid >"$STATE_DIR/ours/munged"
    else
        start_munge # key/ownership checks only; a munged that runs already is not ours
    fi

    # Only (re)write the config while no slurm daemon reads it; then start from a clean state too
    # (no jobs recovered from an earlier run that was not taken down).
    if [[ -z $(running slurmctld) && -z $(running slurmd) ]]; then
        rm -rf "$STATE_DIR"/{state,spool,run} "$STATE_DIR"/ours/{slurmctld,slurmd}
        mkdir -p "$STATE_DIR"/{state,spool,run}
        write_slurm_conf "$cpus" "$mem_mb"
    fi
    start_daemon slurmctld "$STATE_DIR/run/slurmctld.pid" slurmctld
    start_daemon slurmd "$STATE_DIR/run/slurmd.pid" slurmd

    local state=""
    while ((SECONDS - t0 < UP_TIMEOUT)); do
        state=$(node_state)
        [[ $state == idle ]] && break
        sleep 1
    done
    if [[ $state != idle ]]; then
        show_logs
        die "node $HOST is '${state:-no answer}' after ${UP_TIMEOUT}s, not idle (\`$0 down\` cleans up)"
    fi
    say "up (node $HOST, $cpus CPUs, $mem_mb MB) in $((SECONDS - t0)) s"
}

cmd_down() {
    if [[ ! -d $STATE_DIR ]]; then
        say "down (nothing of ours was up)"
        return 0
    fi
    is_root || { say "not root: cannot stop the daemons in $STATE_DIR/ours"; exit 3; }
    lock
    # Jobs of our cluster die with it: cancel them so no slurmstepd outlives slurmd.
    if [[ -f $STATE_DIR/ours/slurmctld ]] && node_is_up; then
        scancel --partition="$PARTITION" 2>/dev/null || true
        local i
        for ((i = 0; i < 20; i++)); do
            [[ -z $(squeue -h -t RUNNING,COMPLETING 2>/dev/null) ]] && break
            sleep 0.5
        done
    fi
    stop_ours slurmd
    stop_ours slurmctld
    stop_ours munged
    if [[ -f $SLURM_CONF ]] && grep -qxF "$CONF_MARKER" "$SLURM_CONF"; then
        if [[ -f $STATE_DIR/slurm.conf.orig ]]; then
            cp -p "$STATE_DIR/slurm.conf.orig" "$SLURM_CONF"
        else
            rm -f "$SLURM_CONF"
        fi
    fi
    rm -rf "$STATE_DIR"
    say "down"
}

cmd_status() {
    if [[ -z $(running slurmctld) ]]; then
        say "not up (no slurmctld running)"
        return 1
    fi
    timeout 15 sinfo 2>&1 || true
    if node_is_up; then
        say "up (node $HOST, $(node_state))"
        return 0
    fi
    say "not up"
    return 1
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 up|down|status" >&2
        exit 2
        ;;
esac
