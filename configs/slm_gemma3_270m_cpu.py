"""SLM (Rho-1) of a real checkpoint on CPU: Gemma 3 270M base trained on the 60% of tokens with the
highest excess loss over a reference (e.g. the export of configs/sft_gemma3_270m_cpu.py).
Fields: reasonax.train.slm.default_config.

    python -m reasonax.train.slm --config=configs/slm_gemma3_270m_cpu.py --config.workdir=/tmp/slm_g3 \
        --config.model.path=$HOME/.cache/reasonax/gemma3-270m-f32 --config.data.files=/tmp/wp/train.jsonl \
        --config.slm.reference.path=/tmp/sft_g3/hf
"""

from reasonax.train.slm import default_config


def get_config():
    c = default_config()
    c.data.template = "few-shot"
    c.seq_len = 128
    c.batch_size = 4
    c.num_steps = 10
    c.optim.lr = 1e-5
    c.optim.warmup_steps = 2
    c.optim.total_steps = 10
    c.checkpoint.every = 5
    c.log_every = 1
    c.slm.ratio = 0.6
    c.slm.mode = "online"  # the reference forward inside the step (no scoring pass for a short run)
    return c
