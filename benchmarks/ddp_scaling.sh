#!/usr/bin/env bash
# DDP scaling of tangpoem's GPU recipe (breeze-h100) on the Breeze-shaped NF4 model: one GPU, then
# `torchrun --nproc_per_node N` on the same machine, same 65 steps of 16 rows (each rank takes 16/N).
# Results of a run: benchmarks/results/nvidia-h200-x2-ddp.json.
#   bash benchmarks/ddp_scaling.sh DATA_DIR N
set -euo pipefail
data_dir=$1; n=${2:-2}
python3 benchmarks/gpu_speed.py --data-dir "$data_dir" --build-only
python3 benchmarks/ddp_train.py /tmp/gpu-speed/breeze-shape "$data_dir" /tmp/ddp-1 2>&1 | tr '\r' '\n' | grep -E "^train: [0-9]+ steps"
torchrun --standalone --nproc_per_node "$n" benchmarks/ddp_train.py /tmp/gpu-speed/breeze-shape "$data_dir" "/tmp/ddp-$n" \
  2>&1 | tr '\r' '\n' | grep -E "^train: [0-9]+ steps"
