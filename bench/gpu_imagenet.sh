#!/usr/bin/env bash
# One prepared check on a GPU machine (issue 30), from the repository root, in under 8 minutes:
#   bash bench/gpu_imagenet.sh [OUT_DIR]
# 1. training images/s on a generated 1,000-class tree of 500x375 JPEGs: random input (the model's ceiling),
#    `alexnet train` itself (Pillow decoding in loader processes), the same loop with Pillow on the CPU workers,
#    and with torchvision.io.decode_jpeg(device="cuda") (nvJPEG) where this torchvision has it
#    (bench/gpu_imagenet.py);
# 2. the start-up at scale on that machine's disk and CPUs: bench/scale.py at 100,000 files.
source "$(dirname "$0")/gpu_env.sh" "$@"

echo "== 1. images/s: random input, alexnet train, Pillow on the CPU, nvJPEG on the GPU"
timeout 300 python3 bench/gpu_imagenet.py --files 64000 --seconds 30 2>&1 | tee "$OUT/gpu_imagenet.txt"

echo "== 2. time to the first step and memory at 100,000 files"
timeout 170 python3 bench/scale.py --files 100000 --workers 8 2>&1 | tee "$OUT/scale.txt"
