"""`python -m kerasft.finetune`: the `kerasft` command line (see `kerasft.finetune.cli`)."""

from kerasft.finetune.cli import cli

if __name__ == "__main__":
    cli()
