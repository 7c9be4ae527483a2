"""`python -m polyvivid.cli ...`, as the operator's training pods run it: `torchrun --module polyvivid.cli
train /etc/polyvivid/training.yaml` (and the --local launcher its workers)."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
