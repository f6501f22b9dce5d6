"""`python -m kerasft.finetune`: see `kerasft.finetune`."""

from kerasft.finetune.runner import main

if __name__ == "__main__":
    main()
