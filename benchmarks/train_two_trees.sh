#!/usr/bin/env bash
# imgcls train with an older commit's source and with this tree's, alternately, on the same data and
# machine (bench_train.py's command: ResNet-18, 224 px, 8 classes x 40 JPEGs of 1024x768, 3 epochs,
# batch 32): whole-process wall time and each epoch's img/s. Run it on a quiet machine.
#   benchmarks/train_two_trees.sh d75e423^ [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${1:?usage: benchmarks/train_two_trees.sh COMMIT [RUNS]}
RUNS=${2:-2}
WORK=$(mktemp -d)
trap 'git worktree remove --force "$WORK/old" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
git worktree add -q --detach "$WORK/old" "$OLD"
DATA=/tmp/imgcls-bench/train-1024x768
.venv/bin/python -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; from common import make_dataset; make_dataset(Path('$DATA'), {'train': 32, 'val': 8}, (1024, 768))"
lscpu | grep -E "Model name|Flags" | cut -c1-160
for i in $(seq 1 "$RUNS"); do
  for tree in "$WORK/old" "$PWD"; do
    uptime
    start=$(date +%s.%N)
    PYTHONPATH="$tree/src" .venv/bin/python -m imgcls train --data "$DATA" --arch resnet18 --pretrained none --epochs 3 \
      --batch-size 32 --image-size 224 --seed 0 --out "$WORK/run" --cache-dir "$WORK/cache" >"$WORK/log" 2>&1
    end=$(date +%s.%N)
    rates=$(.venv/bin/python -c "import json; print([round(json.loads(l)['images_per_second'], 1) for l in open('$WORK/run/metrics.jsonl')])")
    echo "$([ "$tree" = "$PWD" ] && echo this || echo "$OLD") run $i: wall $(python3 -c "print(round($end - $start, 1))") s, epochs img/s $rates"
    rm -rf "$WORK/run" "$WORK/cache"
  done
done
