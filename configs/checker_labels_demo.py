"""Step-checker labels of a demo run's sampled WC solutions (make demo writes runs/demo first).
Fields: reasonax.eval.checker_labels.default_config (solutions: reasonax.eval.stepwise.SolutionFields).

    python -m reasonax.eval.checker_labels --config=configs/checker_labels_demo.py

Another run or model: --config.solutions.files=runs/demo2/samples/se.jsonl
--config.solutions.questions=runs/demo2/data/questions.jsonl --config.output=...
"""

from reasonax.eval.checker_labels import default_config
from reasonax.eval.stepwise import demo_fields


def get_config():
    c = default_config()
    c.solutions.update(demo_fields("runs/demo", ("wc",)))
    c.output = "runs/demo/step_labels/wc-checker.jsonl"
    return c
