"""``python -m rubiks_data.synthetic OUT_DIR ...`` (same as ``rubiks-synth``)."""

import sys

from .cli import main

sys.exit(main())
