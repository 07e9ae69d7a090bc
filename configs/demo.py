"""The demo: the whole compute-matched pipeline on synthetic word problems, on 2 CPU cores in about
ten minutes (`make demo`). Fields: reasonax.pipeline.default_config.

    python -m reasonax.pipeline --config=configs/demo.py --config.workdir=runs/demo
"""

from reasonax.pipeline import default_config


def get_config():
    c = default_config()
    c.workdir = "runs/demo"
    return c
