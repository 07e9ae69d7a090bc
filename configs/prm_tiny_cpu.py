"""A process reward model on a tiny Qwen-style decoder, on CPU in about a minute: synthetic
arithmetic solutions in TRL's stepwise format (tasks.arithmetic.stepwise_records, written under
<workdir>/data at the first run), first-error labels. Fields: reasonax.train.prm.default_config.

    python -m reasonax.train.prm --config=configs/prm_tiny_cpu.py --config.workdir=/tmp/prm_tiny
"""

from reasonax.model.config import TINY_MODEL
from reasonax.train.prm import default_config


def get_config():
    c = default_config()
    c.model.preset = "qwen2.5-0.5b"
    c.model.overrides = dict(TINY_MODEL)
    c.tokenizer = "bytes"
    c.synthetic.task = "arithmetic-steps"
    c.synthetic.num_examples = 2000
    c.synthetic.num_eval = 200
    c.seq_len = 96
    c.batch_size = 16
    c.num_steps = 150
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 10
    c.optim.total_steps = 150
    c.optim.weight_decay = 0.0
    c.checkpoint.every = 50
    c.log_every = 10
    c.eval_every = 50
    c.mesh = dict(data=1, fsdp=-1, tensor=1)
    return c
