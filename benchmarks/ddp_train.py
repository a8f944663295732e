"""One training run of the breeze-h100 recipe, for benchmarks/ddp_scaling.sh (plain or under torchrun).
CUDA graphs are off in both (they are single-GPU), so the two runs differ in the number of GPUs only.

    python benchmarks/ddp_train.py CHECKPOINT_DIR DATA_DIR OUTPUT_DIR
"""

import sys

from tangpoem.config import load_config
from tangpoem.train import train

checkpoint, data_dir, output_dir = sys.argv[1:4]
train(load_config("breeze-h100", {"model_name_or_path": checkpoint, "data_dir": data_dir, "output_dir": output_dir,
                               "cuda_graphs": False}))
