#!/usr/bin/env bash
# One prepared check on a GPU machine (issue 6, second round), from the repository root:
#   bash bench/gpu_loading.sh [OUT_DIR]
# 1. that machine's CPU: does it expose AMX, and what does `--precision auto` pick on it, at 2 threads on 2 cores
#    (the training-step benchmark on the CPU, as on the CI machine);
# 2. end to end on the GPU: the original's loop against `alexnet train` with and without the decoded-image cache,
#    500x375 and 4000x3000 JPEGs, where loading rather than the model sets the speed.
source "$(dirname "$0")/gpu_env.sh" "$@"

echo "== 1. the CPU, 2 cores"
lscpu | grep -E "Model name|^CPU\(s\)|Thread|Socket" | tee "$OUT/cpu.txt"
echo "flags: $(grep -o -w 'amx[a-z_0-9]*\|avx512_bf16\|avx512_fp16' /proc/cpuinfo | sort -u | tr '\n' ' ')" | tee -a "$OUT/cpu.txt"
OMP_NUM_THREADS=2 timeout 150 taskset -c 0,1 python3 bench/train_step.py --device cpu --rounds 2 --steps 3 2>&1 \
    | tee "$OUT/cpu_train_step.txt"

echo "== 2. end to end on the GPU"
timeout 250 python3 bench/end_to_end.py --device cuda --images 1024 --large 32 --epochs 3 --rounds 1 \
    --batch-size 128 --cache /tmp/alexnet-bench 2>&1 | tee "$OUT/end_to_end.txt"
