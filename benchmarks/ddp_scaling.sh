#!/usr/bin/env bash
# DDP scaling of tangpoem's GPU recipe (breeze-h100) on the Breeze-shaped NF4 model: one GPU, then
# `torchrun --nproc_per_node N` on the same machine, same 65 steps of 16 rows (each rank takes 16/N).
#   bash benchmarks/ddp_scaling.sh DATA_DIR N
set -euo pipefail
data_dir=$1; n=${2:-2}
python3 benchmarks/gpu_speed.py --data-dir "$data_dir" --build-only --results-dir /tmp/gpu-speed-results
sets=(--set model_name_or_path=/tmp/gpu-speed/breeze-shape --set "data_dir=$data_dir")
python3 -m tangpoem.cli train --config breeze-h100 "${sets[@]}" --set output_dir=/tmp/ddp-1 2>&1 | grep -E "^train:|^step 65"
torchrun --standalone --nproc_per_node "$n" -m tangpoem.cli train --config breeze-h100 "${sets[@]}" \
  --set output_dir=/tmp/ddp-$n 2>&1 | grep -E "^train:|^step 65"
