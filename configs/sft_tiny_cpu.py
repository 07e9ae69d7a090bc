"""SFT of a tiny Qwen-style model on synthetic arithmetic, on CPU in about a minute.
Fields: reasonax.train.sft.default_config.

    python -m reasonax.train.sft --config=configs/sft_tiny_cpu.py --config.workdir=/tmp/sft_tiny
"""

from reasonax.model.config import TINY_MODEL
from reasonax.train.sft import default_config


def get_config():
    c = default_config()
    c.model.preset = "qwen2.5-0.5b"
    c.model.overrides = dict(TINY_MODEL)
    c.tokenizer = "bytes"
    c.synthetic.task = "arithmetic"
    c.synthetic.num_examples = 2000
    c.data.template = "raw"
    c.seq_len = 128
    c.batch_size = 16
    c.num_steps = 150
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 10
    c.optim.total_steps = 150
    c.optim.weight_decay = 0.0
    c.checkpoint.every = 50
    c.log_every = 10
    c.mesh = dict(data=1, fsdp=-1, tensor=1)
    return c
