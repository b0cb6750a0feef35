"""``python -m rubiks_eval.training``: the training command line."""

import sys

from .cli import main

sys.exit(main())
