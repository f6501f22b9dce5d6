"""Shared fixtures for kerasft.data tests."""

import pytest

from kerasft.data.testing_tokenizer import tiny_gemma_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    """The tiny real Gemma3Tokenizer (trained once per session)."""
    return tiny_gemma_tokenizer()
