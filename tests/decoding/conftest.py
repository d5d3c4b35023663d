import pytest


@pytest.fixture(scope="module", autouse=True)
def decoding_tests_run_at_one_thread(one_thread):
    """Every decoding test module at one thread (tests/conftest.py's `one_thread`)."""
