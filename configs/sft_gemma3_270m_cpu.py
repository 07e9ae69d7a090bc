"""SFT of a real checkpoint on CPU: Gemma 3 270M base (reasonax.model.gguf.gemma3_270m_dir) on word
problems in the few-shot Question/Answer format, a few small steps. Fields:
reasonax.train.sft.default_config.

    python -m reasonax.tasks.word_problems --out_dir=/tmp/wp
    python -m reasonax.train.sft --config=configs/sft_gemma3_270m_cpu.py --config.workdir=/tmp/sft_g3 \
        --config.model.path=$HOME/.cache/reasonax/gemma3-270m-f32 --config.data.files=/tmp/wp/train.jsonl
"""

from reasonax.train.sft import default_config


def get_config():
    c = default_config()
    c.data.template = "few-shot"  # a base model: "Question: ...\nAnswer: ..." as the generate config samples
    c.seq_len = 128
    c.batch_size = 4
    c.num_steps = 10
    c.optim.lr = 1e-5
    c.optim.warmup_steps = 2
    c.optim.total_steps = 10
    c.checkpoint.every = 5
    c.log_every = 1
    c.eval_every = 10
    return c
