"""timm's intermediates tests for the RubiksNet names.

timm's ``tests/test_models.py`` runs ``test_model_forward_intermediates*`` only for the
model modules in its ``FEAT_INTER_FILTERS`` list, which cannot name an out-of-tree
package; this file runs those same test functions on every RubiksNet name. It needs
timm's source checkout on ``sys.path`` (``run.sh`` does that).
"""

import pytest
import timm

import rubiks_models  # noqa: F401  (registers the models)

tm = pytest.importorskip("tests.test_models")  # timm's own test module

NAMES = timm.list_models("rubiksnet*")


@pytest.mark.parametrize("model_name", NAMES)
def test_model_forward_intermediates(model_name: str) -> None:
    tm.test_model_forward_intermediates(model_name, 1)


@pytest.mark.parametrize("model_name", NAMES)
def test_model_forward_intermediates_features(model_name: str) -> None:
    tm.test_model_forward_intermediates_features(model_name, 1)
