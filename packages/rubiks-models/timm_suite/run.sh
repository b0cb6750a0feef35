#!/usr/bin/env bash
# Run timm's own model test-suite (tests/test_models.py) on the RubiksNet models.
#   packages/rubiks-models/timm_suite/run.sh /path/to/pytorch-image-models [pytest args]
# The timm source checkout is not part of this repository; its tests import the installed
# timm. `-p rubiks_models` imports this package (registering the models) before collection.
set -euo pipefail
TIMM_SRC=$(cd "${1:?usage: run.sh TIMM_SOURCE_DIR [pytest args]}" && pwd)
shift
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python}
cd "$TIMM_SRC"
"$PY" -m pytest tests/test_models.py -p rubiks_models -k rubiksnet -q -p no:cacheprovider "$@"
PYTHONPATH="$TIMM_SRC${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m pytest \
    "$HERE/test_timm_intermediates.py" --rootdir "$TIMM_SRC" -q -p no:cacheprovider "$@"
