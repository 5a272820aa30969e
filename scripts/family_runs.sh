#!/usr/bin/env bash
# Real, short runs of the MAML family and ProtoNets, each for a fixed wall-clock budget
# on one thread, then `fewshot eval` on $EVAL_TASKS (600) test tasks. Resumable: run it again and it
# continues unfinished runs and skips evaluated ones.
#
#   scripts/family_runs.sh MINUTES DATA OUT PRESET [PRESET ...]
#   e.g. scripts/family_runs.sh 4 ../shared/data/omniglot-28 runs/family fomaml-omniglot-5w1s anil-omniglot-5w1s
#
# FEWSHOT is the command to run (default .venv/bin/fewshot); it may be several words, e.g.
# another checkout's code: FEWSHOT="env PYTHONPATH=OTHER/src .venv/bin/python -m fewshot.cli".
# EVAL_TASKS is the number of test tasks (default 600); lower it only where 600 tasks of
# an algorithm do not fit the time, and then identically for every run compared.
set -u
minutes=$1 data=$2 out=$3
shift 3
read -r -a fewshot <<< "${FEWSHOT:-.venv/bin/fewshot}"
eval_tasks=${EVAL_TASKS:-600}
for preset in "$@"; do
  run=$out/$preset
  [ -f "$run/eval.json" ] && continue
  if [ ! -f "$run/.budget-spent" ]; then
    if [ -f "$run/config.yaml" ]; then
      "${fewshot[@]}" train --resume "$run" --threads 1 --time-limit "$minutes" --no-progress
    else
      "${fewshot[@]}" train "$preset" --data "$data" --out "$run" --threads 1 --time-limit "$minutes" \
        --set val_every=100 --set val_tasks=50 --set log_every=25 --no-progress
    fi && touch "$run/.budget-spent"
  fi
  "${fewshot[@]}" eval "$run" --tasks "$eval_tasks" --json --threads 1 --no-progress > "$run/eval.json.tmp" &&
    mv "$run/eval.json.tmp" "$run/eval.json"
  "${fewshot[@]}" plot "$run" >/dev/null
done
