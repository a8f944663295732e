"""One training run of the breeze-h100 recipe, for benchmarks/ddp_scaling.sh (plain or under torchrun), on the
course's whole 5001-row epoch with CUDA graphs on (each rank captures its own; the ranks' gradients are
averaged in one all-reduce a step). Rank 0 writes the run's figures to FIGURES_JSON.

    python benchmarks/ddp_train.py CHECKPOINT_DIR DATA_DIR OUTPUT_DIR FIGURES_JSON [KEY=VALUE ...]
"""

import os
import sys

from tangpoem.config import load_config, parse_set
from tangpoem.io import atomic_write_json
from tangpoem.train import train

checkpoint, data_dir, output_dir, figures_json = sys.argv[1:5]
overrides = {"model_name_or_path": checkpoint, "data_dir": data_dir, "output_dir": output_dir, "num_train_data": 5001,
             **parse_set(sys.argv[5:])}
cfg = load_config("breeze-h100", overrides)
result = train(cfg)
if int(os.environ.get("RANK", "0")) == 0:
    atomic_write_json(figures_json, {
        "processes": int(os.environ.get("WORLD_SIZE", "1")), "rows": cfg.num_train_data, "steps": len(result.history),
        "cuda_graphs": cfg.cuda_graphs, "loop_seconds": result.seconds, "capture_seconds": result.timings["capture_seconds"],
        "checkpoint_seconds": result.timings["checkpoint_seconds"],
        "train_seconds": result.seconds - result.timings["checkpoint_seconds"],
        "first_loss": result.history[0]["loss"], "last_loss": result.history[-1]["loss"],
        "graph_shape": list(vars(result.graph_shape).values()) if result.graph_shape else None,
    })
