#!/usr/bin/env bash
# Resume every long run kept in training/ in the background, niced, one torch thread
# each, each stopped cleanly (saved) after MINUTES; run at the start of a session.
#
#   scripts/resume_training.sh MINUTES           # resume them all
#   scripts/resume_training.sh MINUTES NAME ...  # only training/NAME, ...
#
# A run folder (config.yaml + last.pt, not yet at its last step) continues with
# `fewshot train --resume`; an embed folder (pretrain.pt, no embed.json yet) with the
# command in its `command` file (a `fewshot embed ... --out training/NAME` line). Each
# appends to training/NAME.log. A folder holding a file `paused` (its first line says why)
# is left alone unless named. Before the session ends: `kill -TERM` any still running
# (they save and exit 143), then commit the folders (docs/results.md, "Shipped models").
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:?usage: scripts/resume_training.sh MINUTES [NAME ...]}
shift
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
    for folder in training/*/; do names+=("$(basename "$folder")"); done
fi
fewshot=${FEWSHOT:-fewshot}
named=$#
for name in "${names[@]}"; do
    folder=training/$name
    if [ -f "$folder/paused" ] && [ "$named" -eq 0 ]; then
        echo "$folder: paused ($(head -n 1 "$folder/paused")); name it to resume it"
        continue
    fi
    if [ -f "$folder/config.yaml" ] && [ -f "$folder/last.pt" ]; then
        command=("$fewshot" train --resume "$folder")
    elif [ -f "$folder/command" ] && [ ! -f "$folder/embed.json" ]; then
        read -r -a command < "$folder/command"
        command[0]=$fewshot
    else
        echo "$folder: nothing to resume (finished, or not a run or embed folder)"
        continue
    fi
    nohup nice "${command[@]}" --threads 1 --time-limit "$minutes" --no-progress >> "training/$name.log" 2>&1 &
    echo "$folder: resumed in the background (pid $!), log training/$name.log"
done
