"""python -m reasonax.train.grpo --config=configs/grpo_tiny_cpu.py --config.workdir=/tmp/grpo [--dry_run]"""

from reasonax.train.grpo.recipe import cli

if __name__ == "__main__":
    cli()
