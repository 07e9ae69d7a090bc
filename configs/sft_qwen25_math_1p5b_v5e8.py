"""SFT of Qwen2.5-Math-1.5B on a TPU v5e-8 (8 chips, 16 GiB HBM each), FSDP over all 8 chips.
Fields: reasonax.train.sft.default_config.

Check the memory plan first, on this machine's CPU (fake devices, nothing allocated; the model
is the 'qwen2.5-math-1.5b' preset, same shapes as the checkpoint):

    python -m reasonax.train.sft --config=configs/sft_qwen25_math_1p5b_v5e8.py --dry_run

A real run starts from the Hugging Face checkpoint instead of the random-init preset: set the
path and clear the preset (exactly one of the two may be set), and give the data:

    python -m reasonax.train.sft --config=configs/sft_qwen25_math_1p5b_v5e8.py \
        --config.model.path=/path/to/Qwen2.5-Math-1.5B --config.model.preset='' \
        --config.data.files=/path/to/train.jsonl --config.workdir=/path/to/workdir

Global batch 64 rows x 4096 tokens (262k tokens per step) in 8 micro-batches of 8 rows (1 row
per chip), bfloat16 params with float32 AdamW state, full rematerialisation of each layer
The dry run estimates 10.5 GiB per chip (2 rows per chip per micro-batch: 13.7 GiB, too tight;
remat="dots": 19.3 GiB, does not fit).
"""

from reasonax.train.sft import default_config


def get_config():
    c = default_config()
    c.model.path = ""  # real run: the HF directory of Qwen/Qwen2.5-Math-1.5B (and model.preset='')
    c.model.preset = "qwen2.5-math-1.5b"  # the dry run's stand-in (same shapes)
    c.data.template = "qwen-chat"
    c.seq_len = 4096  # Qwen2.5-Math's max_position_embeddings
    c.batch_size = 64
    c.accum_steps = 8
    c.param_dtype = "bfloat16"
    c.remat = "full"
    c.mesh = dict(data=1, fsdp=8, tensor=1)
    c.device_memory_gib = 16.0  # TPU v5e: 16 GiB HBM per chip (read by --dry_run)
    c.peak_flops = "tpu v5e"
    c.num_steps = 2000
    c.optim.lr = 1e-5
    c.optim.warmup_steps = 100
    c.optim.total_steps = 2000
    c.optim.end_lr_ratio = 0.1
    c.optim.b2 = 0.95
    c.optim.weight_decay = 0.01
    c.optim.clip_norm = 1.0
    c.checkpoint.every = 500
    c.log_every = 10
    return c
