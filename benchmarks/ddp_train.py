"""One training run of the breeze-h100 recipe, for benchmarks/ddp_scaling.sh (plain or under torchrun).
CUDA graphs are off in both (they are single-GPU), so the two runs differ in the number of GPUs only.
Rank 0 writes the run's figures to FIGURES_JSON.

    python benchmarks/ddp_train.py CHECKPOINT_DIR DATA_DIR OUTPUT_DIR FIGURES_JSON
"""

import os
import sys

from tangpoem.config import load_config
from tangpoem.io import atomic_write_json
from tangpoem.train import train

checkpoint, data_dir, output_dir, figures_json = sys.argv[1:5]
result = train(load_config("breeze-h100", {"model_name_or_path": checkpoint, "data_dir": data_dir, "output_dir": output_dir,
                                        "cuda_graphs": False}))
if int(os.environ.get("RANK", "0")) == 0:
    atomic_write_json(figures_json, {
        "processes": int(os.environ.get("WORLD_SIZE", "1")), "steps": len(result.history),
        "loop_seconds": result.seconds, "checkpoint_seconds": result.timings["checkpoint_seconds"],
        "train_seconds": result.seconds - result.timings["checkpoint_seconds"],
        "first_loss": result.history[0]["loss"], "last_loss": result.history[-1]["loss"],
    })
