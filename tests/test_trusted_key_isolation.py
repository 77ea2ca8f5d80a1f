"""The throw-away test key is trusted within one test file only (tests/conftest.py).

A test of "a model signed by a key nobody trusts is refused" must not pass or fail depending on
which files ran before it. Each file starts with the shipped keys alone, whatever an earlier
file trusted (in a full run, tests/test_trust.py, which trusts the test key, runs just before
this file). The files that use the session's signed stand-ins (tests/test_one_rule.py and
others) show that such a file gets the test key back.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from desktop.engine import trust
from desktop.engine.errors import ModelError
from desktop.engine.manifest import read_manifest
from tests.model_factory import TEST_KEY_NAME, build_model_set, trust_test_key


def test_a_file_starts_with_only_the_shipped_keys() -> None:
    assert set(trust.TRUSTED_KEYS) == {"medscreen-release-2026"}
    trust_test_key()  # left behind on purpose: the next file must not see it


def test_a_signed_stand_in_is_trusted_only_while_the_test_key_is(tmp_path: Path) -> None:
    manifest = read_manifest(next(build_model_set(tmp_path).glob("*.json")))
    assert TEST_KEY_NAME in trust.TRUSTED_KEYS
    trust.verify_signature(manifest.raw, manifest.path)
    del trust.TRUSTED_KEYS[TEST_KEY_NAME]
    with pytest.raises(ModelError, match="does not trust"):
        trust.verify_signature(manifest.raw, manifest.path)
