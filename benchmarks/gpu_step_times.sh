#!/bin/bash
# The GPU figures issue 21 asks for (seconds per meta-step on CUDA of the Omniglot and miniImageNet
# presets), as one script for the device machine. Before it, copy the data it reads into the
# git-ignored runs/gpu-data: cp -r ../shared/data/omniglot-28 runs/gpu-data/ and the miniImageNet
# sample (images/ and the CSVs) into runs/gpu-data/miniimagenet; carry runs/gpu-data. Writes each
# run's log and one file of all metrics rows under $OUT. Not yet run: no device was lent.
export PYTHONPATH=src
D=runs/gpu-data
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
git log --oneline -1 2>/dev/null || true
F="python3 -m fewshot.cli"
common="--device cuda --no-progress --set log_every=100 --set val_every=300 --set save_every=300 --set val_tasks=100"
t() { local name=$1; shift; local start=$SECONDS; timeout 65 $F train "$@" --out $OUT/$name $common > $OUT/$name.log 2>&1; echo "$name: exit $? wall $((SECONDS - start)) s"; tail -3 $OUT/$name.log; }
t o5w1s omniglot-5w1s --data $D/omniglot-28 --set steps=300
t o5w1s_loop omniglot-5w1s --data $D/omniglot-28 --set steps=300 --set batch_tasks=false
t o20w1s omniglot-20w1s --data $D/omniglot-28 --set steps=300
t pp20w1s mamlpp-omniglot-20w1s --data $D/omniglot-28 --set steps=300
t o5w1s_pt omniglot-5w1s-pytorch --data $D/omniglot-28 --set steps=300
t proto protonet-omniglot-5w1s --data $D/omniglot-28 --set steps=300
timeout 60 $F data miniimagenet --from $D/miniimagenet --name mini --allow-partial --no-progress 2>&1 | tail -2
t mini1 maml-miniimagenet-5w1s --data mini --set steps=300
# one file back: the metrics rows of every run
for r in o5w1s o5w1s_loop o20w1s pp20w1s o5w1s_pt proto mini1; do echo "== $r"; cat $OUT/$r/metrics.jsonl 2>/dev/null; done > $OUT/metrics_all.txt
for r in o5w1s o5w1s_loop o20w1s pp20w1s o5w1s_pt proto mini1; do rm -rf $OUT/$r; done
