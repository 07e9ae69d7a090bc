"""GRPO of Qwen3-1.7B on GSM8K/MATH-style JSONL on one H100 (80 GB). Fields:
reasonax.train.grpo.default_config.

    python -m reasonax.train.grpo --config=configs/grpo_qwen3_1p7b_h100.py --dry_run
    python -m reasonax.train.grpo --config=configs/grpo_qwen3_1p7b_h100.py \
        --config.model.path=/path/to/Qwen3-1.7B --config.model.preset='' \
        --config.grpo.files=/path/to/train.jsonl --config.workdir=/path/to/workdir

The paper's recipe (DeepSeekMath): seq-mean-token-mean loss, k3 KL with beta 0.04 against the
initial policy (so a frozen bf16 reference copy lives on the GPU), clip 0.2 both sides, group
size 16, 32 prompts per step, completions up to 1024 tokens; 2 updates per rollout batch
(mu = 2: the second is off-policy, so the learner's pre-update log-probs are computed once).
Each update runs 32 micro-batches of 16 rows. The dry run checks the train step only (the
sampler generates in row chunks within its own memory budget).
"""

from reasonax.train.grpo import default_config


def get_config():
    c = default_config()
    c.model.path = ""  # real run: the HF directory of Qwen/Qwen3-1.7B (and model.preset='')
    c.model.preset = "qwen3-1.7b"
    c.grpo.template = "qwen-chat"
    c.grpo.prompts_per_step = 32
    c.grpo.group_size = 16
    c.grpo.max_prompt_len = 512
    c.grpo.max_new_tokens = 1024
    c.grpo.temperature = 1.0
    c.grpo.mu = 2
    c.grpo.minibatches = 1
    c.grpo.beta = 0.04
    c.grpo.eps_low, c.grpo.eps_high = 0.2, 0.2
    c.grpo.aggregation = "seq-mean-token-mean"
    c.grpo.eval_limit = 500
    c.accum_steps = 32  # 16 rows per micro-batch: 56.7 GiB in the dry run (8: 109 GiB, 16: 74.6 GiB)
    c.param_dtype = "bfloat16"
    c.remat = "full"
    c.mesh = dict(data=1, fsdp=1, tensor=1)
    c.device_memory_gib = 80.0  # H100 SXM
    c.peak_flops = "h100"
    c.num_steps = 500
    c.optim.lr = 1e-6
    c.optim.warmup_steps = 10
    c.optim.total_steps = 500
    c.optim.end_lr_ratio = 1.0
    c.optim.weight_decay = 0.0
    c.eval_every = 50
    c.checkpoint.every = 25
    c.log_every = 1
    return c
