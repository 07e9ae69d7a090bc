"""GRPO of Qwen2.5-Math-1.5B on GSM8K/MATH-style JSONL ({"prompt", "answer"} records) on a TPU
v5e-8 (8 chips, 16 GiB HBM each), FSDP over the 8 chips. Fields: reasonax.train.grpo.default_config.

    python -m reasonax.train.grpo --config=configs/grpo_qwen25_math_1p5b_v5e8.py --dry_run
    python -m reasonax.train.grpo --config=configs/grpo_qwen25_math_1p5b_v5e8.py \
        --config.model.path=/path/to/Qwen2.5-Math-1.5B --config.model.preset='' \
        --config.grpo.files=/path/to/train.jsonl --config.grpo.eval_files=/path/to/heldout.jsonl \
        --config.workdir=/path/to/workdir

Per step: 64 prompts x 8 completions of up to 1024 tokens (prompt up to 512), graded by the
strict grader; 4 optimizer updates of 128 rows (minibatches=4, mu=1), each in 4 micro-batches of
32 rows (4 per chip); the learner's log-probs before the updates come from one extra forward
(the prepare pass; needed once minibatches > 1). DAPO-style settings: clip-higher (0.2 / 0.28),
token-mean loss, no KL (beta = 0, so no reference model), dynamic sampling, overlong shaping
over the last 256 tokens, truncated importance-sampling correction (cap 2) for the bf16 sampler.
The dry run compiles the train step and the rollout engine's decode block (its slots' KV cache
from grpo.kv_budget_gb) and checks that the larger of the two fits.
"""

from reasonax.train.grpo import default_config


def get_config():
    c = default_config()
    c.model.path = ""  # real run: the HF directory of Qwen/Qwen2.5-Math-1.5B (and model.preset='')
    c.model.preset = "qwen2.5-math-1.5b"  # the dry run's stand-in (same shapes)
    c.grpo.template = "qwen-chat"
    c.grpo.prompts_per_step = 64
    c.grpo.group_size = 8
    c.grpo.max_prompt_len = 512
    c.grpo.max_new_tokens = 1024
    c.grpo.temperature = 1.0
    c.grpo.minibatches = 4
    c.grpo.mu = 1
    c.grpo.beta = 0.0
    c.grpo.eps_low, c.grpo.eps_high = 0.2, 0.28
    c.grpo.aggregation = "token-mean"
    c.grpo.dynamic_sampling = True
    c.grpo.max_sampling_rounds = 3
    c.grpo.overlong_buffer = 256
    c.grpo.is_cap = 2.0
    c.grpo.eval_limit = 500
    c.accum_steps = 4
    c.param_dtype = "bfloat16"
    c.remat = "full"
    c.mesh = dict(data=1, fsdp=8, tensor=1)
    c.device_memory_gib = 16.0  # TPU v5e
    c.peak_flops = "tpu v5e"
    c.num_steps = 500
    c.optim.lr = 1e-6
    c.optim.warmup_steps = 10
    c.optim.total_steps = 500
    c.optim.end_lr_ratio = 1.0
    c.optim.weight_decay = 0.0
    c.optim.clip_norm = 1.0
    c.eval_every = 50
    c.checkpoint.every = 25
    c.log_every = 1
    return c
