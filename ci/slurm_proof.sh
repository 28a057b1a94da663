#!/usr/bin/env bash
# Proof that profiles/slurm runs camfaith on SLURM (`make slurm-test`; docs/cluster.md).
# Starts a throwaway one-node cluster on 127.0.0.1 (munged, MariaDB, slurmdbd, slurmctld, slurmd,
# two fake GPUs), runs tests/tiny_config.yaml through the profile, checks the outputs and, with
# sacct, which jobs asked for a GPU; then checks that a failing job fails the run.
# Needs root on a Debian 12 machine without a SLURM of its own; installs Debian's SLURM packages
# when missing. Everything lives in one temporary folder; every daemon is stopped by its pid on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
RUN_LIMIT=${SLURM_PROOF_RUN_LIMIT:-1500}   # seconds for the tiny workflow (3 to 5 min here)
FAIL_LIMIT=300                              # seconds for the failing one (under 1 min here)
PARTITION=proof ACCOUNT=camfaith CLUSTER=camfaithproof
HOST=$(hostname -s)
GPU_RULES=" train evaluate explain score_batch "   # score jobs run inside score_batch groups
CPU_RULES=" index split score_ground_truth tables figures overlays verdict "  # download is a localrule: no SLURM job

say() { printf '[slurm-proof %s] %s\n' "$(date +%T)" "$*"; }
tail_logs() {
  local log
  # Daemon logs, snakemake's, and the SLURM logs the plugin kept (it deletes those of successes).
  for log in "$WORK"/log/*.log $(find "$WORK/run/.snakemake/slurm_logs" -name '*.log' 2>/dev/null); do
    [[ -s $log ]] && { echo "---- tail of $log"; tail -n 20 "$log"; }
  done
}
fail() { say "FAILED: $*" >&2; tail_logs >&2; exit 1; }
start() { # start NAME COMMAND...: a daemon in the foreground of a background process, so that $!
  # is the daemon's own pid; its output goes to log/NAME.log.
  local name=$1; shift
  "$@" >"$WORK/log/$name.log" 2>&1 &
  PIDS+=($!)
}
wait_for() { # wait_for SECONDS WHAT COMMAND...: poll COMMAND until it succeeds; fail at the
  # deadline, or at once if the daemon started last has died.
  local limit=$1 what=$2 out; shift 2
  local deadline=$((SECONDS + limit))
  until out=$("$@" 2>&1); do
    kill -0 "${PIDS[-1]}" 2>/dev/null || fail "$what: the daemon exited"
    ((SECONDS < deadline)) || fail "$what not ready after ${limit}s; '$*' said: $out"
    sleep 0.5
  done
}

[[ $(id -u) == 0 ]] || { echo "slurm_proof: needs root (slurmd, mknod, daemons run as munge/mysql)" >&2; exit 1; }
[[ -x $VENV/bin/python ]] || { echo "slurm_proof: no virtualenv at $VENV (make test creates it)" >&2; exit 1; }
WORK=$(mktemp -d /tmp/camfaith-slurm.XXXXXX)
chmod 755 "$WORK"   # munged and mariadbd run as their own users and must reach their folders
mkdir -p "$WORK"/{bin,etc,log,pid,dev,state,spool,munge,mysql,run,fail,profile}
PIDS=()             # the daemons we started, in start order
CLUSTER_UP=""
START=$(date +%Y-%m-%dT%H:%M:%S)

cleanup() {
  local rc=$? i pid
  set +e
  # Jobs left by a killed snakemake would outlive slurmd (slurmstepd is not its child).
  if [[ -n $CLUSTER_UP ]]; then
    scancel --quiet --user=root
    for _ in $(seq 30); do [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break; sleep 1; done
  fi
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do   # reverse start order: slurmd first, munged last
    pid=${PIDS[i]}
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null && say "pid $pid ignored SIGTERM for 15 s: killed"
  done
  if ((rc == 0)); then rm -rf "$WORK"; else say "state kept for inspection in $WORK" >&2; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- packages (about 30 s on a fresh machine). They cannot start services here (no init system),
# which suits us: we start each daemon ourselves, on our own files.
missing=()
for package in slurmctld slurmd slurm-client munge slurmdbd mariadb-server; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'ok installed' || missing+=("$package")
done
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  { timeout 600 apt-get update -qq && timeout 900 apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
    >"$WORK/log/apt.txt" 2>&1 || { tail -n 20 "$WORK/log/apt.txt" >&2; fail "apt-get install ${missing[*]}"; }
fi

# --- free ports, so as not to collide with another SLURM or MariaDB on this host.
read -r CTLD_PORT SLURMD_PORT DBD_PORT < <("$VENV/bin/python" -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')

# --- munge authenticates every SLURM message: our own key and socket, run as user munge, which
# insists on a key only it can read and a socket folder everybody can enter.
MUNGE_SOCKET=$WORK/munge/munge.socket
dd if=/dev/urandom of="$WORK/munge/munge.key" bs=1024 count=1 status=none
chown -R munge:munge "$WORK/munge" && chmod 755 "$WORK/munge" && chmod 400 "$WORK/munge/munge.key"
start munged setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged --foreground \
  --key-file="$WORK/munge/munge.key" --socket="$MUNGE_SOCKET" --pid-file="$WORK/munge/munged.pid" \
  --seed-file="$WORK/munge/munged.seed"
munge_ok() { munge --socket="$MUNGE_SOCKET" -n | unmunge --socket="$MUNGE_SOCKET"; }
wait_for 20 munged munge_ok

# --- MariaDB for slurmdbd (accounting). Without accounting sacct fails, and the plugin, which
# checks job states with sacct, waits forever; with it, sacct also tells what each job asked for.
MYSQL_SOCKET=$WORK/mysql/mysqld.sock
chown mysql:mysql "$WORK/mysql"
mariadb-install-db --no-defaults --user=mysql --datadir="$WORK/mysql/data" --skip-test-db \
  --auth-root-authentication-method=socket >"$WORK/log/mariadb-install.txt" 2>&1 \
  || fail "mariadb-install-db (see $WORK/log/mariadb-install.txt)"
start mariadbd mariadbd --no-defaults --user=mysql --datadir="$WORK/mysql/data" --skip-networking \
  --socket="$MYSQL_SOCKET" --pid-file="$WORK/mysql/mysqld.pid"
wait_for 60 mariadbd mariadb-admin --socket="$MYSQL_SOCKET" ping
DB_PASSWORD=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
mariadb --socket="$MYSQL_SOCKET" -e "CREATE DATABASE slurm_acct_db;
  CREATE USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" || fail "creating the accounting database"

# --- two fake GPUs: slurmd only needs gres.conf's device files to exist as character devices
# (plain files drain the node). 1,3 is /dev/null's device number: harmless if opened.
mknod "$WORK/dev/fakegpu0" c 1 3 && mknod "$WORK/dev/fakegpu1" c 1 3

# --- configuration. Daemons and clients find slurm.conf through SLURM_CONF, and gres.conf and
# slurmdbd.conf next to it. No LogFile: in the foreground (-D) the daemons log to their output.
export SLURM_CONF=$WORK/etc/slurm.conf
cat >"$WORK/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$WORK/pid/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASSWORD
StorageLoc=slurm_acct_db
EOF
chmod 600 "$WORK/etc/slurmdbd.conf"   # slurmdbd refuses a config others can read (a password)

# The node claims 8 CPUs although this machine may have 2: the profile asks 4 CPUs per GPU, as a
# real GPU node would give, and the proof tests that profile unchanged rather than shrink it to
# this machine (a job asking more CPUs than any node has would pend forever).
# SlurmdParameters=config_overrides makes slurmd accept a node bigger than its hardware; with
# TaskPlugin=task/none nothing pins threads, so jobs just share the real cores. Memory likewise:
# RealMemory is what the profile's requests need; nothing enforces it without cgroups.
cat >"$SLURM_CONF" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/pid/slurmctld.pid
SlurmdPidFile=$WORK/pid/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without it, a job with no memory request would take the whole node.
DefMemPerCPU=1000
SlurmdParameters=config_overrides
ReturnToService=2
MailProg=/bin/true
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# To reach slurmdbd, SLURM takes the munge socket from here, not from AuthInfo.
AccountingStoragePass=$MUNGE_SOCKET
# gres/gpu is not among the TRES that accounting records by default; the comment holds the rule.
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
GresTypes=gpu
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=8 RealMemory=64000 Gres=gpu:2 State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
echo "Name=gpu File=$WORK/dev/fakegpu[0-1]" >"$WORK/etc/gres.conf"

# --- SLURM daemons. slurmdbd reaches MariaDB through our socket, not the system's default one.
start slurmdbd env MYSQL_UNIX_PORT="$MYSQL_SOCKET" slurmdbd -D
wait_for 30 slurmdbd sacctmgr -n list cluster
for entity in "cluster $CLUSTER" "account $ACCOUNT cluster=$CLUSTER" "user root account=$ACCOUNT cluster=$CLUSTER"; do
  # shellcheck disable=SC2086 # one word per sacctmgr argument
  sacctmgr -i add $entity >/dev/null || fail "sacctmgr add $entity"
done
start slurmctld slurmctld -D -i
wait_for 30 slurmctld scontrol ping
CLUSTER_UP=1
start slurmd slurmd -D
node_idle() { [[ $(sinfo -h -o %T) == idle ]]; }
wait_for 60 "node $HOST (idle)" node_idle
say "cluster up in ${SECONDS}s: $(sinfo -h -o '%P: %D node, %c CPUs, %G, %m MB, %T')"

# --- the workflow, through the profile as a user has it: a copy with its two CHANGE_ME
# placeholders (partition, account) filled in. Overriding them with --default-resources instead
# would replace the profile's whole default-resources list, silently dropping its other keys.
# The one command-line override: first status check after 5 s instead of 40.
sed -e "s/CHANGE_ME_partition/$PARTITION/" -e "s/CHANGE_ME_account/$ACCOUNT/" \
  "$ROOT/profiles/slurm/config.yaml" >"$WORK/profile/config.yaml"
! grep -q 'slurm_partition: CHANGE_ME\|slurm_account: CHANGE_ME' "$WORK/profile/config.yaml" \
  || fail "profiles/slurm/config.yaml: a placeholder was not filled in"
# Jobs re-run `python -m snakemake` with the submitting environment: the venv goes on PATH.
# Inside a job, the plugin's jobstep drops SLURM_* variables (SLURM_CONF among them) before its
# `srun`; a real cluster keeps slurm.conf where srun looks by default (or serves it configless).
# Ours is in $WORK, so a two-line srun in front of the real one puts SLURM_CONF back.
printf '#!/bin/sh\nSLURM_CONF=%s exec /usr/bin/srun "$@"\n' "$SLURM_CONF" >"$WORK/bin/srun"
chmod 755 "$WORK/bin/srun"
export PATH=$WORK/bin:$VENV/bin:$PATH
smk() { # smk LIMIT LOG ARGS...: snakemake with the profile; SIGKILL at LIMIT, because the plugin's
  # status loop does not stop on SIGTERM.
  local limit=$1 log=$2; shift 2
  (cd "$ROOT" && timeout -s KILL "$limit" python -m snakemake --profile "$WORK/profile" \
    --slurm-init-seconds-before-status-checks 5 "$@") >"$log" 2>&1
}
say "running tests/tiny_config.yaml through profiles/slurm (limit ${RUN_LIMIT}s)"
t0=$SECONDS
smk "$RUN_LIMIT" "$WORK/log/snakemake.log" --snakefile "$ROOT/Snakefile" --directory "$WORK/run" \
  --configfile "$ROOT/tests/tiny_config.yaml" || fail "snakemake exited $? (137: killed at the limit)"
say "workflow done in $((SECONDS - t0))s"

# --- every final output of the tiny config (rule all: tables, figures, overlays); then snakemake
# itself, asked again in the same folder, must find nothing left to do: every score file the plan
# holds (each model's methods × metrics, less skip_methods) exists and is up to date.
expected=(results/aggregate/default/tables/{classification.csv,classification.md,summary.csv,paired_tests.csv,aopc.md,max_sensitivity.md,haas.md,pointing_game.md}
  results/aggregate/default/figures/{morf_curves,max_sensitivity,accuracy_vs_aopc}.{png,pdf}
  results/aggregate/default/figures/overlays/synthetic/{tinyres,tinygap}.{png,pdf}
  results/aggregate/{verdict.md,protocols.md})
for file in "${expected[@]}"; do [[ -s $WORK/run/$file ]] || fail "missing output $file"; done
(cd "$ROOT" && python -m snakemake -n --snakefile "$ROOT/Snakefile" --directory "$WORK/run" \
  --configfile "$ROOT/tests/tiny_config.yaml") >"$WORK/log/dry_run.log" 2>&1 || fail "snakemake -n after the run"
grep -q 'Nothing to be done' "$WORK/log/dry_run.log" || fail "snakemake -n after the run still plans jobs: $(grep -A20 'Job stats' "$WORK/log/dry_run.log")"
# per method (results/score/<protocol>/<dataset>/<model>/<method>/<metric>.parquet): the score jobs the
# score_batch groups hold; a localisation metric's file is one level up, one CPU job per model
score_files=$(find "$WORK/run/results/score" -mindepth 5 -name '*.parquet' | wc -l)
((score_files > 0)) || fail "no score files"
ground_truth_files=$(find "$WORK/run/results/score" -mindepth 4 -maxdepth 4 -name '*.parquet' | wc -l)
((ground_truth_files == 2)) || fail "expected the tiny run's pointing game once per model (2 files), found $ground_truth_files"
say "all ${#expected[@]} final outputs and $score_files score files present; snakemake -n: nothing to be done"

# --- what each job asked SLURM for, from the accounting database. -X: allocations, not steps;
# -P: '|'-separated, nothing truncated. The plugin puts the rule in the job's comment (stored
# thanks to AccountingStoreFlags=job_comment). ReqTRES says cpu=1 for GPU jobs because
# --cpus-per-gpu is resolved at allocation: AllocTRES has the 4 CPUs.
sacct -X -n -P -S "$START" -o JobID,Comment,ReqTRES,AllocTRES,State,Timelimit >"$WORK/log/sacct.txt" || fail "sacct"
declare -A jobs_of=()
while IFS='|' read -r id comment req alloc state limit; do
  rule=${comment#rule_}; rule=${rule%%_wildcards_*}
  [[ $rule == score_batch_* ]] && rule=score_batch   # a group's comment: rule_<group>_<its rules>
  [[ $state == COMPLETED ]] || fail "SLURM job $id ($rule) ended $state"
  if [[ $GPU_RULES == *" $rule "* ]]; then
    [[ $req == *gres/gpu=1* && $alloc == *gres/gpu=1* ]] || fail "GPU job $id ($rule) without a GPU: req=$req alloc=$alloc"
  elif [[ $CPU_RULES == *" $rule "* ]]; then
    [[ $req$alloc != *gpu* ]] || fail "CPU job $id ($rule) got a GPU: req=$req alloc=$alloc"
  else
    fail "SLURM job $id: unexpected comment '$comment'"
  fi
  jobs_of[$rule]=$((${jobs_of[$rule]:-0} + 1))
  [[ $rule == score_batch ]] && batch="$alloc, time limit $limit"
done <"$WORK/log/sacct.txt"
for rule in $GPU_RULES $CPU_RULES; do ((${jobs_of[$rule]:-0} > 0)) || fail "no SLURM job of rule $rule in sacct"; done
# group-components: 4 score jobs per submission, the last one holding the rest.
batches=$(((score_files + 3) / 4))
((jobs_of[score_batch] == batches)) || fail "the $score_files score jobs should make $batches submissions of up to 4, not ${jobs_of[score_batch]}"
say "sacct: with gres/gpu=1: $(for r in $GPU_RULES; do printf '%s×%s ' "$r" "${jobs_of[$r]}"; done)"
say "sacct: without a GPU:   $(for r in $CPU_RULES; do printf '%s×%s ' "$r" "${jobs_of[$r]}"; done)"
say "sacct: one score_batch: $batch"

# --- a failing job must fail the run, with SLURM's verdict in snakemake's output.
cat >"$WORK/fail/Snakefile" <<'EOF'
rule broken:
    output: "never.txt"
    shell: "echo 'failing on purpose'; exit 1"
EOF
say "running a deliberately failing job (limit ${FAIL_LIMIT}s)"
rc=0
smk "$FAIL_LIMIT" "$WORK/log/failing.log" --snakefile "$WORK/fail/Snakefile" --directory "$WORK/fail" || rc=$?
((rc != 0)) || fail "snakemake exited 0 although its job failed"
((rc != 137)) || fail "the failing run was killed at its ${FAIL_LIMIT}s limit instead of reporting the failure"
verdict=$(grep -m1 -o "SLURM status is: 'FAILED'" "$WORK/log/failing.log") \
  || fail "snakemake exited $rc without SLURM's FAILED state in its output"
say "failing job: snakemake exited $rc and said \"$verdict\""
say "OK in ${SECONDS}s"
