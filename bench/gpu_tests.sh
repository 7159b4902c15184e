#!/usr/bin/env bash
# The test files that touch the CUDA path (precision, checkpoints, resume, pretrained, pictures, torchrun), run on
# a CUDA machine where `--device auto` picks the GPU:  bash bench/gpu_tests.sh
set -uo pipefail
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
timeout ${GPU_TEST_TIMEOUT:-320} python3 -m pytest -q -p no:cacheprovider tests/training/test_reliability.py \
    tests/inference/test_pretrained.py tests/inference/test_evaluate.py tests/inference/test_visualise.py tests/runtime/test_performance.py \
    tests/runtime/test_distributed.py tests/cli/test_demo.py 2>&1 | tail -25
