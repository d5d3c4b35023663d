"""Fixtures of the backbone tests: tiny MLLM checkpoints saved on disk (tests/backbones/checkpoints.py)."""
from __future__ import annotations

import pytest

from tests.backbones.checkpoints import write_checkpoint


@pytest.fixture(scope="session")
def mllm_checkpoint(tmp_path_factory):
    """``mllm_checkpoint(family)`` -> the directory of that family's tiny saved checkpoint, written once per session.
    Tests only read it."""
    root, made = tmp_path_factory.mktemp("mllm_checkpoints"), {}

    def get(family: str):
        if family not in made:
            made[family] = write_checkpoint(family, root / family)
        return made[family]

    return get
