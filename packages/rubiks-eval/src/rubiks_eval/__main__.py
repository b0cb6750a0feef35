"""``python -m rubiks_eval`` (also under ``torchrun -m rubiks_eval``)."""

import sys

from .cli import main

sys.exit(main())
