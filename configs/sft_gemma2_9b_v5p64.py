"""SFT of Gemma2-9B on a TPU v5p-64 slice, FSDP over its 32 chips.
Fields: reasonax.train.sft.default_config.

TPU v5p slice names count TensorCores: v5p-64 is 32 chips of 2 TensorCores each, and JAX sees
one device per chip (megacore), so the mesh has 32 devices of 95 GiB HBM each.

Check the memory plan first, on this machine's CPU (32 fake devices, nothing allocated; the
model is the 'gemma2-9b' preset, same shapes as the checkpoint):

    python -m reasonax.train.sft --config=configs/sft_gemma2_9b_v5p64.py --dry_run

A real run starts from the Hugging Face checkpoint: set the path and clear the preset (exactly
one of the two may be set), and give the data (on a multi-host slice, also config.distributed):

    python -m reasonax.train.sft --config=configs/sft_gemma2_9b_v5p64.py \
        --config.model.path=/path/to/gemma-2-9b --config.model.preset='' \
        --config.data.files=/path/to/train.jsonl --config.workdir=/path/to/workdir

Global batch 128 rows x 4096 tokens (524k tokens per step, 4 rows per chip, no accumulation),
bfloat16 params with float32 AdamW state, full rematerialisation of each layer. The dry run
estimates 38.5 GiB per chip (remat="dots" at 2 rows per chip: 88 GiB, too tight).
"""

from reasonax.train.sft import default_config


def get_config():
    c = default_config()
    c.model.path = ""  # real run: the HF directory of google/gemma-2-9b (and model.preset='')
    c.model.preset = "gemma2-9b"  # the dry run's stand-in (same shapes)
    c.data.template = "gemma-chat"
    c.seq_len = 4096  # Gemma 2's sliding window; 8192 positions are supported
    c.batch_size = 128
    c.accum_steps = 1
    c.param_dtype = "bfloat16"
    c.remat = "full"
    c.mesh = dict(data=1, fsdp=32, tensor=1)
    c.device_memory_gib = 95.0  # TPU v5p: 95 GiB HBM per chip (read by --dry_run)
    c.peak_flops = "tpu v5p"
    c.num_steps = 2000
    c.optim.lr = 5e-6
    c.optim.warmup_steps = 100
    c.optim.total_steps = 2000
    c.optim.end_lr_ratio = 0.1
    c.optim.weight_decay = 0.01
    c.optim.clip_norm = 1.0
    c.checkpoint.every = 500
    c.log_every = 10
    return c
