"""Fixtures for the trainer unit tests: a tiny tokenizer trained on a few Chinese sentences."""

from __future__ import annotations

import pytest

SENTENCES = [
    "今天天气很好，我们去公园散步。",
    "机器学习是人工智能的一个分支。",
    "请用Python写一个排序函数。",
    "春眠不觉晓，处处闻啼鸟。",
] * 5


@pytest.fixture(scope="session")
def tokenizer():
    from trainers.data import train_tokenizer

    return train_tokenizer(SENTENCES, vocab_size=300)


@pytest.fixture
def forgeflow_home(tmp_path, monkeypatch):
    """An empty FORGEFLOW_HOME (file lake, SQLite MLflow) for this test."""
    from tasks.settings import get_settings

    monkeypatch.setenv("FORGEFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    get_settings.cache_clear()
    yield tmp_path / "home"
    get_settings.cache_clear()
