#!/usr/bin/env bash
# DDP scaling of tangpoem's GPU recipe (breeze-h100, CUDA graphs on) on the Breeze-shaped NF4 model, over the
# course's whole 5001-row epoch (313 steps of 16 rows): one GPU, then `torchrun --nproc_per_node N` on the same
# machine (each rank takes 16/N rows of every step, captures its own graphs, and the ranks' gradients are
# averaged in one all-reduce a step). Writes RESULTS_DIR/<gpu>-x<N>-ddp.json (device, versions, commit, figures).
#   bash benchmarks/ddp_scaling.sh DATA_DIR N COMMIT [RESULTS_DIR]
set -euo pipefail
data_dir=$1; n=${2:-2}; commit=${3:-unknown}; results_dir=${4:-benchmarks/results}
work=/tmp/ddp-scaling; rm -rf "$work"; mkdir -p "$work"
python3 benchmarks/breeze_shape.py /tmp/gpu-speed/breeze-shape --data-dir "$data_dir"
python3 benchmarks/ddp_train.py /tmp/gpu-speed/breeze-shape "$data_dir" "$work/run-1" "$work/one.json"
torchrun --standalone --nproc_per_node "$n" benchmarks/ddp_train.py /tmp/gpu-speed/breeze-shape "$data_dir" "$work/run-$n" "$work/ddp.json"
python3 - "$work" "$n" "$commit" "$results_dir" <<'PY'
import json, sys
from pathlib import Path
import torch
sys.path.insert(0, "benchmarks")
from measure import environment, results_file
from tangpoem.io import atomic_write_json
work, n, commit, results_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
one, ddp = (json.load(open(f"{work}/{name}.json")) for name in ("one", "ddp"))
atomic_write_json(results_file(results_dir, f"-x{n}-ddp"), {
    "what": "DDP scaling of tangpoem's breeze-h100 recipe (CUDA graphs on: each rank captures its own, the gradients are "
            "averaged in one all-reduce a step) over the course's 5001-row epoch, on the random Breeze-shaped NF4 model; "
            "each figure is the first training run of its process",
    **environment(commit), "gpus": torch.cuda.device_count(),
    "how": f"benchmarks/ddp_scaling.sh: one process, then torchrun --standalone --nproc_per_node {n} of "
           "benchmarks/ddp_train.py; each rank takes 16/N of every 16 rows",
    "one_gpu": one, f"ddp_{n}_gpus": ddp, "speedup_train_seconds": one["train_seconds"] / ddp["train_seconds"],
    "target": {"speedup_train_seconds": ">= 1.7 (issue 18)", "met": one["train_seconds"] / ddp["train_seconds"] >= 1.7},
})
PY
