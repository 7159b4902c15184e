# Sourced by the bench/gpu*.sh scripts: the output folder, the checkout on the import path, and what the
# machine has. Usage: source bench/gpu_env.sh "$@"
set -uo pipefail
OUT=${1:-${OUT:-/tmp/gpu-out}}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision, typer, rich; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'typer', typer.__version__, 'cuda', torch.version.cuda)"
