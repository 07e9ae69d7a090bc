"""Monte Carlo (Math-Shepherd) step labels of a demo run's sampled WC solutions, with the demo's
WC model as the policy (make demo writes runs/demo first). Fields: reasonax.sample.mc_labels.default_config.

    python -m reasonax.sample.mc_labels --config=configs/mc_labels_demo.py --config.max_records=16
"""

from reasonax.eval.stepwise import demo_fields
from reasonax.sample.mc_labels import default_config


def get_config():
    c = default_config()
    c.model = "runs/demo/models/wc/hf"
    c.tokenizer = "runs/demo/tokenizer"
    c.solutions.update(demo_fields("runs/demo", ("wc",)))
    c.output = "runs/demo/step_labels/wc-mc.jsonl"
    c.rollout.k = 4
    c.rollout.max_new_tokens = 96   # the demo's sampling length
    c.rollout.temperature = 0.7     # the demo's sampling temperature
    return c
