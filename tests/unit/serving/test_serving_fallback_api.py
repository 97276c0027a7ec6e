"""The fallback server's HTTP layer and sampling helpers, without loading a model."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving import fallback_server as fs


class RecordingGenerator(fs.Generator):
    """A generator whose model is replaced by a canned answer; records what the API asked for."""

    def __init__(self) -> None:
        super().__init__(Path("/models/tiny"), "tiny", 64)
        self.max_model_len = 64
        self.calls: list[tuple[list[int], fs._Sampling, int | None]] = []

    def chat_prompt(self, messages: list[fs.ChatMessage]) -> list[int]:
        return [ord(c) % 50 for c in "".join(fs._text_content(m, i) for i, m in enumerate(messages))]

    def text_prompt(self, prompt: str) -> list[int]:
        return [1] * len(prompt)

    def generate(self, prompt_ids: list[int], req: fs._Sampling, default_max_tokens: int | None) -> fs.Generation:
        self.calls.append((prompt_ids, req, default_max_tokens))
        return fs.Generation("hi there", len(prompt_ids), 2, "stop")


@pytest.fixture
def client() -> tuple[TestClient, RecordingGenerator]:
    gen = RecordingGenerator()
    return TestClient(fs.create_app(gen)), gen


def test_models_and_health(client: tuple[TestClient, RecordingGenerator]) -> None:
    c, _ = client
    assert c.get("/health").json()["backend"] == "fallback"
    (model,) = c.get("/v1/models").json()["data"]
    assert model["id"] == "tiny" and model["max_model_len"] == 64


def test_chat_completion_shape_and_sampling_fields(client: tuple[TestClient, RecordingGenerator]) -> None:
    c, gen = client
    resp = c.post(
        "/v1/chat/completions",
        json={
            "model": "tiny",
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": [
                {"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}]}],
            "temperature": 0.3, "top_p": 0.9, "max_tokens": 5, "seed": 1, "stop": ["\n"], "user": "ignored",
        },
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "chat.completion" and body["model"] == "tiny"
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "hi there"},
                                "finish_reason": "stop"}]
    assert body["usage"] == {"prompt_tokens": 13, "completion_tokens": 2, "total_tokens": 15}  # "be brief" + "hello"
    _, req, default = gen.calls[0]
    assert (req.temperature, req.top_p, req.max_tokens, req.seed, req.stop) == (0.3, 0.9, 5, 1, ["\n"])
    assert default is None  # chat defaults to the rest of the context, like vLLM


def test_completion_defaults_to_16_tokens(client: tuple[TestClient, RecordingGenerator]) -> None:
    c, gen = client
    body = c.post("/v1/completions", json={"model": "tiny", "prompt": "abc"}).json()
    assert body["object"] == "text_completion" and body["choices"][0]["text"] == "hi there"
    assert gen.calls[0][2] == 16


@pytest.mark.parametrize(
    ("path", "payload", "status", "needle"),
    [
        ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "n": 3}, 400, "n=3"),
        ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stream": True},
         400, "stream"),
        ("/v1/chat/completions", {"model": "other", "messages": [{"role": "user", "content": "x"}]}, 404,
         "`other` does not exist"),
        ("/v1/chat/completions", {"model": "tiny", "messages": []}, 400, "messages"),
        ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "x"}}]}]}, 400, "accepts text only"),
        ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                                  "temperature": 3}, 400, "temperature"),
        ("/v1/completions", {"model": "tiny", "prompt": ["a", "b"]}, 400, "takes one"),
        ("/v1/completions", {"model": "tiny", "prompt": "a", "echo": True}, 400, "echo"),
    ],
)
def test_rejections_use_openai_error_bodies(
    client: tuple[TestClient, RecordingGenerator], path: str, payload: dict, status: int, needle: str
) -> None:
    c, gen = client
    resp = c.post(path, json=payload)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert needle in error["message"] and error["code"] == status
    assert gen.calls == []


def test_pick_greedy_and_top_p() -> None:
    import torch

    logits = torch.tensor([0.0, 5.0, 4.9, -1.0])
    rng = torch.Generator().manual_seed(0)
    assert fs._pick(logits, 0.0, 1.0, rng) == 1
    # A tiny top_p keeps only the most likely token, whatever the temperature.
    assert {fs._pick(logits, 2.0, 0.01, rng) for _ in range(20)} == {1}
    # The same seed gives the same draws.
    draws = [fs._pick(logits, 1.0, 1.0, torch.Generator().manual_seed(5)) for _ in range(3)]
    assert len(set(draws)) == 1
