"""SLM (Rho-1) of the tiny Qwen-style model on synthetic arithmetic whose completions are 30%
random junk, keeping the 60% of tokens with the highest excess loss over a reference trained on
clean problems (configs/slm_ref_tiny_cpu.py). Fields: reasonax.train.slm.default_config.

    python -m reasonax.train.sft --config=configs/slm_ref_tiny_cpu.py --config.workdir=/tmp/slm_ref
    python -m reasonax.train.slm --config=configs/slm_tiny_cpu.py --config.workdir=/tmp/slm \
        --config.slm.reference.path=/tmp/slm_ref/hf
"""

from reasonax.model.config import TINY_MODEL
from reasonax.train.slm import default_config


def get_config():
    c = default_config()
    c.model.preset = "qwen2.5-0.5b"
    c.model.overrides = dict(TINY_MODEL)
    c.tokenizer = "bytes"
    c.synthetic.task = "arithmetic"
    c.synthetic.num_examples = 2000
    c.synthetic.noise = 0.3
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
    c.slm.ratio = 0.6
    c.slm.scope = "batch"
    c.slm.mode = "offline"
    return c
