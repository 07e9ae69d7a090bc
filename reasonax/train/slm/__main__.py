"""python -m reasonax.train.slm --config=configs/slm_tiny_cpu.py --config.workdir=/tmp/slm [--dry_run | --score_only]"""

from reasonax.train.slm.recipe import cli

if __name__ == "__main__":
    cli()
