"""GRPO of the tiny Qwen-style model on synthetic arithmetic, on CPU. Fields:
reasonax.train.grpo.default_config. From random init the correctness reward stays 0; start from
the SFT run's export instead:

    python -m reasonax.train.sft --config=configs/sft_tiny_cpu.py --config.workdir=/tmp/sft_tiny
    python -m reasonax.train.grpo --config=configs/grpo_tiny_cpu.py --config.workdir=/tmp/grpo_tiny \
        --config.model.path=/tmp/sft_tiny/hf --config.model.preset=''
"""

from reasonax.model.config import TINY_MODEL
from reasonax.train.grpo import default_config


def get_config():
    c = default_config()
    c.model.preset = "qwen2.5-0.5b"
    c.model.overrides = dict(TINY_MODEL)
    c.tokenizer = "bytes"
    c.synthetic.task = "arithmetic"
    c.synthetic.num_heldout = 100
    c.grpo.template = "raw"
    c.grpo.prompts_per_step = 8
    c.grpo.group_size = 8
    c.grpo.max_prompt_len = 64
    c.grpo.max_new_tokens = 64
    c.grpo.temperature = 1.0
    c.grpo.eval_limit = 100
    c.num_steps = 40
    c.optim.lr = 1e-4
    c.optim.warmup_steps = 0
    c.optim.total_steps = 40
    c.optim.end_lr_ratio = 1.0
    c.optim.weight_decay = 0.0
    c.eval_every = 20
    c.checkpoint.every = 20
    c.log_every = 1
    return c
