#!/usr/bin/env bash
# The speed measurements of docs/benchmarks.md, one after another, for a quiet machine
# (nothing else running). Logs under runs/bench/.
#   bash benchmarks/quiet_window.sh ../shared/data/omniglot-28
set -u
data=$1
py=.venv/bin/python
mkdir -p runs/bench
$py benchmarks/task_batching.py --data "$data" --steps 7 \
  --presets omniglot-5w1s omniglot-5w5s omniglot-20w1s omniglot-5w1s-pytorch > runs/bench/quiet-batching.md 2>&1
$py benchmarks/peers.py --data "$data" --workloads omniglot-5w1s omniglot-5w1s-pytorch omniglot-20w1s --orders second \
  --steps 5 --warmup 1 --no-memory --set batch_tasks=true --json runs/bench/quiet-peers-batched.json \
  > runs/bench/quiet-peers-batched.md 2> runs/bench/quiet-peers-batched.log
$py benchmarks/procs.py --data "$data" --preset omniglot-5w1s --steps 60 --procs 2 > runs/bench/quiet-procs.md 2>&1
$py benchmarks/procs.py --data "$data" --preset omniglot-5w1s-pytorch --steps 12 --procs 2 >> runs/bench/quiet-procs.md 2>&1
