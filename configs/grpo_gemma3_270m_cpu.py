"""GRPO of a real checkpoint on CPU: Gemma 3 270M (base, or the export of
configs/sft_gemma3_270m_cpu.py) on word problems, a few small steps. Fields:
reasonax.train.grpo.default_config.

    python -m reasonax.train.grpo --config=configs/grpo_gemma3_270m_cpu.py --config.workdir=/tmp/grpo_g3 \
        --config.model.path=/tmp/sft_g3/hf --config.grpo.files=/tmp/wp/train.jsonl \
        --config.grpo.eval_files=/tmp/wp/test.jsonl
"""

from reasonax.train.grpo import default_config


def get_config():
    c = default_config()
    c.grpo.template = "few-shot"
    c.grpo.prompts_per_step = 2
    c.grpo.group_size = 4
    c.grpo.max_prompt_len = 512
    c.grpo.max_new_tokens = 48
    c.grpo.eval_limit = 8
    c.num_steps = 4
    c.optim.lr = 1e-6
    c.optim.total_steps = 4
    c.checkpoint.every = 2
    c.log_every = 1
    c.eval_every = 4
    return c
