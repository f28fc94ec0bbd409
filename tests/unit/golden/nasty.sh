#!/bin/bash
#SBATCH --job-name=nasty.values_1
#SBATCH --comment=hpcops:0123456789abcdef
#SBATCH --output=/scratch/vision-lab/hpcops/runs/r-000042/stdout.log
#SBATCH --error=/scratch/vision-lab/hpcops/runs/r-000042/stderr.log
#SBATCH --export=NONE
#SBATCH --account=vision-lab
#SBATCH --partition=cpu
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --time=60

# hpcops run r-000042 of lab vision-lab. The daemon learns that the job started and ended from
# the two marker files this script writes into the run directory, without asking slurmctld.

# --- prologue ---
set -u
hpcops_run_dir=/scratch/vision-lab/hpcops/runs/r-000042
hpcops_child=
hpcops_status=0
hpcops_warned=

# A marker is written under a temporary name and renamed, so a reader never sees half of one.
hpcops_mark() {
    printf '%s\n' "$2" > "$hpcops_run_dir/$1.tmp.$$" &&
        mv -f -- "$hpcops_run_dir/$1.tmp.$$" "$hpcops_run_dir/$1"
}
# The epilogue's handlers are set first, so that whatever ends the script writes the exit marker.
hpcops_on_exit() {
    local now
    printf -v now '%(%s)T' -1
    hpcops_mark hpcops.exit "$1 $now"
}
# Slurm sends TERM at the time limit, on scancel and on preemption, then KILL after KillWait.
hpcops_on_term() {
    if [ -n "$hpcops_child" ]; then
        kill -TERM "$hpcops_child" 2>/dev/null
        wait "$hpcops_child" 2>/dev/null
    fi
    exit 143
}
# For checkpoint: (#SBATCH --signal=B:USR1@300), or a --signal in extra_directives: Slurm signals
# this script only, and the command gets the warning; the job goes on.
hpcops_forward() {
    hpcops_warned=$1
    if [ -n "$hpcops_child" ]; then
        kill "-$1" "$hpcops_child" 2>/dev/null
    fi
}
trap 'hpcops_on_exit "$?"' EXIT
trap hpcops_on_term TERM
trap 'hpcops_forward USR1' USR1
trap 'hpcops_forward USR2' USR2

# A requeued job runs this script again: the exit marker of the attempt before must not stay.
rm -f -- "$hpcops_run_dir/"hpcops.exit
printf -v hpcops_started '%(%s)T' -1
# A task of a job array (a sweep's points) is <array id>_<task id> to Slurm's commands.
hpcops_job_id=${SLURM_JOB_ID:-unknown}
if [ -n "${SLURM_ARRAY_JOB_ID:-}" ] && [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
    hpcops_job_id=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}
fi
# uname, not $HOSTNAME: bash keeps a HOSTNAME exported by the submitting shell on the login node.
hpcops_mark hpcops.started "$hpcops_started $(uname -n) $hpcops_job_id"

# The job's environment is explicit. --export=NONE started this script with none of the daemon's
# environment: the account's login environment (HOME, USER, SHELL, TMPDIR, a login PATH, ...)
# and SLURM_*, as measured on Slurm 22.05.8.
# srun inherits SLURM_EXPORT_ENV=NONE from sbatch and would start each task with an empty
# environment (22.05.8: "execve(): env: No such file or directory"); ALL gives the tasks this
# script's environment, the explicit one below.
export SLURM_EXPORT_ENV=ALL
# The daemon's variables the lab config passes through (jobs.env_passthrough), the run's
# identity, then the spec's params (as HPCOPS_PARAM_<NAME>) and env, each quoted.
export HPCOPS_RUN_ID=r-000042
export HPCOPS_RUN_DIR=/scratch/vision-lab/hpcops/runs/r-000042
export HPCOPS_LAB=vision-lab
export HPCOPS_EXPERIMENT='quotes '"'"'single'"'"' "double" — ünïcödé ✓'
export HPCOPS_ATTEMPT=1
export HPCOPS_CHECKPOINT_DIR=/scratch/vision-lab/hpcops/runs/r-000042/checkpoint
export HPCOPS_PARAM_SINGLE_QUOTE='it'"'"'s'
export HPCOPS_PARAM_DOUBLE_QUOTE='say "hi"'
export HPCOPS_PARAM_DOLLAR_PAREN='$(touch pwned-dollar)'
export HPCOPS_PARAM_RM_RF='$(rm -rf /nonexistent-hpcops-canary)'
export HPCOPS_PARAM_BACKTICKS='`touch pwned-backtick`'
export HPCOPS_PARAM_BREAK_SINGLE=''"'"'; touch pwned-single; '"'"''
export HPCOPS_PARAM_BREAK_DOUBLE='"; touch pwned-double; "'
export HPCOPS_PARAM_VARIABLES='$HOME ${PATH} $1 $@ $$ ${x:-$(touch pwned-default)}'
export HPCOPS_PARAM_BACKSLASHES='C:\new\table \\ \'
export HPCOPS_PARAM_GLOB='* ?.[ch] ~ {a,b}'
export HPCOPS_PARAM_OPERATORS='a; b && c || d | e > f < g & h'
export HPCOPS_PARAM_HASH='# not a comment'
export HPCOPS_PARAM_SPACES='  leading, inner  and trailing  '
export HPCOPS_PARAM_UNICODE='naïve 日本語 🚀'
export HPCOPS_PARAM_JINJA='{{ 7 * 7 }} {% if true %}x{% endif %}'
export HPCOPS_PARAM_EMPTY=''
export HPCOPS_PARAM_ESCAPES='a\nb\tc'
export HPCOPS_PARAM_PERCENT='100% %s %(x)s'
export HPCOPS_PARAM_YES_STRING=yes
export HPCOPS_PARAM_BOOLEAN=true
export HPCOPS_PARAM_INTEGER=42
export HPCOPS_PARAM_NEGATIVE=-7
export HPCOPS_PARAM_FLOAT=0.1
export HPCOPS_PARAM_EXPONENT=1e-05
export NASTY_QUOTES=''"'"'"'"'"'"'"'"''
export NASTY_SUBST='$(touch pwned-env)'
export NASTY_NUMBER=8
export NASTY_BOOL=false
export LC_NASTY='é'

# The run's checkpoint directory ($HPCOPS_CHECKPOINT_DIR): every attempt of the run gets the same
# one, because a new attempt reuses the run directory; this script only ever creates it.
if ! mkdir -p -- /scratch/vision-lab/hpcops/runs/r-000042/checkpoint; then
    echo "hpcops: could not create the checkpoint directory "/scratch/vision-lab/hpcops/runs/r-000042/checkpoint >&2
    exit 1
fi
cd -- '/home/ana/it'"'"'s a "quoted" dir/$(touch pwned-workdir)' || exit 1

# --- command ---
# The command is shell code by design, and the one value in this script that is not quoted. It is
# copied verbatim into a here-document with a quoted delimiter, in which bash expands nothing,
# read into a variable, and run by a new bash:
#  - its quotes, here-documents and line breaks reach that bash byte for byte;
#  - an `exit` in it ends that bash only, so the epilogue still runs;
#  - it inherits none of this script's `set -u`, traps and functions;
#  - it runs in the background while this script waits, because bash runs a trap only between
#    commands: with the command in the foreground, Slurm's TERM would wait for it to end.
# The delimiter holds this submission's token, and render.py makes sure no line of the command
# equals it. A background command starts with SIGINT ignored, so `scancel --signal=INT` does not
# reach it; Slurm's own signals (TERM, then KILL) do.
IFS= read -r -d '' hpcops_command <<'HPCOPS_COMMAND_0123456789abcdef_'
printf '%s\0' "$PWD" > "$HPCOPS_RUN_DIR/pwd.bin"
env -0 > "$HPCOPS_RUN_DIR/env.bin"
echo "it's \"quoted\", \$escaped, a backslash \\ and a tab:	end"
cat <<'HPCOPS_COMMAND_0123456789abcdef'
the user's own here-document, ended by the delimiter hpcops would have picked: $NOT `run`
HPCOPS_COMMAND_0123456789abcdef
echo '{{ jinja }} {% raw %} stays as written'
HPCOPS_COMMAND_0123456789abcdef_
"$BASH" -c "$hpcops_command" &
hpcops_child=$!
wait "$hpcops_child"
hpcops_status=$?
# Above 128, the status may be a forwarded USR1/USR2 cutting the wait short: wait on if so.
while [ "$hpcops_status" -gt 128 ] && kill -0 "$hpcops_child" 2>/dev/null; do
    wait "$hpcops_child"
    hpcops_status=$?
done

# --- epilogue ---
# The EXIT trap writes the exit marker with this status.
exit "$hpcops_status"
