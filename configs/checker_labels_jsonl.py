"""Step-checker labels of a generic solutions JSONL ({id, prompt, completion, answer} per line), here
the word-problem task's gold solutions (python -m reasonax.tasks.word_problems --out_dir=/tmp/wp).
Fields: reasonax.eval.checker_labels.default_config (solutions: reasonax.eval.stepwise.SolutionFields).

    python -m reasonax.eval.checker_labels --config=configs/checker_labels_jsonl.py
"""

from reasonax.eval.checker_labels import default_config


def get_config():
    c = default_config()
    c.solutions.files = ("/tmp/wp/train.jsonl",)
    c.solutions.separator = ". "       # word-problem solutions: one equation per sentence, on one line
    c.solutions.keep_fields = ("level",)
    c.grade_answer = True              # the last step is also wrong when the final answer is not the gold
    c.output = "/tmp/wp/checker_labels.jsonl"
    return c
