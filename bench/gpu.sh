#!/usr/bin/env bash
# One prepared GPU check (issues 6 and 8), run from the repository root on a CUDA machine:
#   bash bench/gpu.sh [OUT_DIR]
# 1. training step at batch 256: the original eager fp32 loop against `alexnet train`'s step (AMP + channels_last);
# 2. a 1-GPU torchrun smoke run with NCCL, then a single-process evaluate of its checkpoint;
# 3. the demo on the GPU;
# 4. the train/evaluate/predict tests with CUDA present (device auto picks it).
source "$(dirname "$0")/gpu_env.sh" "$@"

echo "== 1. training step, batch 256"
timeout 150 python3 bench/train_step.py --device cuda --batch-size 256 --rounds 5 --steps 10 2>&1 | tee "$OUT/train_step.txt"

echo "== 2. torchrun, 1 GPU, NCCL"
WORK=$(mktemp -d)
python3 - "$WORK" <<'PY'
import sys
from alexnet_cli.data.sources.synthetic import make_shapes_folder
make_shapes_folder(f"{sys.argv[1]}/data/train", ("circle", "square", "triangle"), 40, 96, seed=1)
make_shapes_folder(f"{sys.argv[1]}/data/val", ("circle", "square", "triangle"), 11, 96, seed=2)
PY
(cd "$WORK" && timeout 120 torchrun --standalone --nproc_per_node=1 -m alexnet_cli train data/train --val data/val \
    --epochs 2 --image-size 96 --batch-size 16 --workers 2 --output runs/ddp 2>&1 | grep -v "^Epoch" | tee "$OUT/torchrun.txt"
 echo "torchrun exit: ${PIPESTATUS[0]}" | tee -a "$OUT/torchrun.txt"
 cat runs/ddp/metrics.csv | tee -a "$OUT/torchrun.txt"
 timeout 120 python3 -m alexnet_cli evaluate data/val --weights runs/ddp/best.pt --json 2>&1 | tail -40 | tee -a "$OUT/torchrun.txt")

echo "== 3. demo on the GPU"
START=$SECONDS
(cd "$WORK" && timeout 120 python3 -m alexnet_cli demo --workers 6 2>&1 | grep -v "^Epoch \[" | tail -45 \
    | tee "$OUT/demo.txt")
echo "demo wall: $((SECONDS - START)) s" | tee -a "$OUT/demo.txt"

echo "== 4. tests with CUDA present"
timeout 120 python3 -m pytest -q -x tests/training/test_train.py tests/inference/test_evaluate.py tests/inference/test_predict.py 2>&1 | tail -15 | tee "$OUT/tests.txt"
