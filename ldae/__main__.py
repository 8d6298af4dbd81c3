"""``python -m ldae``: the command-line interface (:mod:`ldae.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":  # importing the module (documentation tools do) runs nothing
    sys.exit(main())
