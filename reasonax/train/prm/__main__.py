"""python -m reasonax.train.prm --config=configs/prm_tiny_cpu.py --config.workdir=/tmp/prm [--dry_run]"""

from reasonax.train.prm.recipe import cli

if __name__ == "__main__":
    cli()
