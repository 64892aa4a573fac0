#!/usr/bin/env bash
# A worker in bash, on the karmchari command alone (pip install ./client).
#
# It registers a job (or takes JOB_ID), works through STEPS steps of
# STEP_SECONDS each, and after each step asks Karmchari, with a heartbeat,
# what the job should do: the exit code of `karmchari heartbeat` says it.
#
#   KARMCHARI_URL=http://127.0.0.1:51463 STEPS=30 examples/worker.sh
#   karmchari pause <id>   # it stops and says so; karmchari resume <id>: it goes on
#   karmchari kill <id>    # it cleans up and exits
#   Ctrl-C or kill <pid>   # the job is marked failed, "interrupted by ..."
#
# Exit status: 0 when done or killed (after cleaning up), 1 on any error,
# 130 after Ctrl-C, 143 after SIGTERM.
set -uo pipefail

steps=${STEPS:-10}
step_seconds=${STEP_SECONDS:-1}
worker=${WORKER_NAME:-$(hostname)-$$}

job=${JOB_ID:-$(karmchari register "${JOB_TYPE:-teams}" --name "bash worker" \
                --heartbeat-timeout 30)} || exit 1
echo "job $job"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# Ctrl-C and SIGTERM alike: the job is marked failed as interrupted (not as a
# failure of the work), then the EXIT trap cleans up. Exits 128 + the signal.
interrupted() {
    karmchari fail "$job" --reason "interrupted by $1" >/dev/null
    echo "interrupted by $1: the job is marked failed; cleaning up"
    exit "$2"
}
trap 'interrupted "SIGINT (Ctrl-C)" 130' INT
trap 'interrupted SIGTERM 143' TERM

# heartbeat PROGRESS OBSERVED-STATE: sets $state from the exit code; retries
# while the service is unavailable (exit code 5).
heartbeat() {
    local code
    while true; do
        karmchari heartbeat "$job" --worker "$worker" --progress "$1" \
            --message "step $step of $steps" --observed-state "$2" >/dev/null
        code=$?
        case $code in
            0)  state=start;  return ;;
            10) state=pause;  return ;;
            11) state=kill;   return ;;
            12|13) state=finished; return ;;
            5)  sleep 1 ;;                  # service unavailable: try again
            *)  echo "heartbeat failed ($code)" >&2; exit 1 ;;
        esac
    done
}

step=0
observed=start
while (( step < steps )); do
    heartbeat $(( 100 * step / steps )) "$observed"
    case $state in
        start)
            if [[ $observed == pause ]]; then echo "resumed at step $step"; fi
            observed=start
            sleep "$step_seconds"                      # the work of one step
            echo "step $step" >> "$scratch/progress"
            step=$(( step + 1 ))
            echo "step $step/$steps done" ;;
        pause)
            if [[ $observed != pause ]]; then echo "paused at step $step"; fi
            observed=pause
            sleep "$step_seconds" ;;
        kill)
            echo "killed at step $step: cleaning up"
            rm -rf "$scratch"
            heartbeat $(( 100 * step / steps )) kill     # acknowledge the kill
            exit 0 ;;
        finished)
            echo "the job was finished elsewhere"
            exit 0 ;;
    esac
done
karmchari done "$job" --reason "all $steps steps" >/dev/null || exit 1
echo "done"
