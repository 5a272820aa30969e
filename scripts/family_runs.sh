#!/usr/bin/env bash
# Real, short runs of the MAML family and ProtoNets, each for a fixed wall-clock budget
# on one thread, then `fewshot eval` on 600 test tasks. Resumable: run it again and it
# continues unfinished runs and skips evaluated ones.
#
#   scripts/family_runs.sh MINUTES DATA OUT PRESET [PRESET ...]
#   e.g. scripts/family_runs.sh 4 ../shared/data/omniglot-28 runs/family fomaml-omniglot-5w1s anil-omniglot-5w1s
set -u
minutes=$1 data=$2 out=$3
shift 3
fewshot=${FEWSHOT:-.venv/bin/fewshot}
for preset in "$@"; do
  run=$out/$preset
  [ -f "$run/eval.json" ] && continue
  if [ ! -f "$run/.budget-spent" ]; then
    if [ -f "$run/config.yaml" ]; then
      $fewshot train --resume "$run" --threads 1 --time-limit "$minutes" --no-progress
    else
      $fewshot train "$preset" --data "$data" --out "$run" --threads 1 --time-limit "$minutes" \
        --set val_every=100 --set val_tasks=50 --set log_every=25 --no-progress
    fi && touch "$run/.budget-spent"
  fi
  $fewshot eval "$run" --tasks 600 --json --threads 1 --no-progress > "$run/eval.json.tmp" &&
    mv "$run/eval.json.tmp" "$run/eval.json"
  $fewshot plot "$run" >/dev/null
done
