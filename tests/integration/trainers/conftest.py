"""Fixtures for the trainer integration tests: a temporary Forgeflow home with tiny dataset versions,
and a fake OpenAI-compatible server (a test double; the product path always talks to a real server)."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,  # head size 32: one vLLM's CPU build serves
    "num_key_value_heads": 1,  # exercises grouped-query attention
    "vocab_size": 512,
    "max_position_embeddings": 128,
}
DIGITS = "零一二三四五六七八九"


def _sft_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        rows.append(
            {
                "id": f"s{seed}-{i}",
                "system": "你是一个会算数的助手。" if i % 3 == 0 else None,
                "context": [f"{DIGITS[a]}加{DIGITS[b]}等于多少？"],
                "target": f"{DIGITS[a]}加{DIGITS[b]}等于{a + b}。",
                "meta": {"source": "synthetic", "tags": []},
            }
        )
    return rows


def _pretrain_rows(n: int) -> list[dict]:
    rng = random.Random(0)
    subjects = ["春天", "小河", "老师", "城市", "月亮", "我们"]
    verbs = ["喜欢", "看见", "想念", "走过", "写下"]
    objects = ["花开的声音", "远方的山", "一首古诗", "清晨的阳光", "安静的夜晚"]
    rows = []
    for i in range(n):
        text = "".join(f"{rng.choice(subjects)}{rng.choice(verbs)}{rng.choice(objects)}。" for _ in range(6))
        rows.append({"id": f"p{i}", "text": text, "meta": {"source": "synthetic", "tags": []}})
    return rows


@pytest.fixture(scope="session")
def tiny_model():
    """TinyModelConfig of the integration tests: 2 layers, 64 dims, 2 heads (1 KV head), 512 tokens."""
    from tasks.specs import TinyModelConfig

    return TinyModelConfig(**TINY)


def write_version(root: Path, rows: list[dict]) -> Path:
    """A dataset version directory: data/part-0.parquet + manifest.json."""
    import pandas as pd

    (root / "data").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(root / "data" / "part-0.parquet")
    (root / "manifest.json").write_text(json.dumps({"records": len(rows)}))
    return root


@pytest.fixture(scope="module")
def forgeflow_home(tmp_path_factory) -> Iterator[Path]:
    """A fresh FORGEFLOW_HOME (file lake + SQLite MLflow), shared by one test module's chain."""
    from tasks.settings import get_settings

    home = tmp_path_factory.mktemp("forgeflow")
    mp = pytest.MonkeyPatch()
    mp.setenv("FORGEFLOW_HOME", str(home))
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("FORGEFLOW_CODE_VERSION", "test-sha")
    get_settings.cache_clear()
    lake = home / "lake"
    write_version(lake / "datasets" / "pretrain" / "v1", _pretrain_rows(80))
    write_version(lake / "datasets" / "sft" / "v1", _sft_rows(120, seed=1))
    write_version(lake / "datasets" / "sft-eval" / "v1", _sft_rows(12, seed=2))
    yield home
    mp.undo()
    get_settings.cache_clear()


class FakeChatServer:
    """Answers /v1/chat/completions from a question -> answer map; '坏' always 500s, '慢' 503s once.

    An answer is a string (finish_reason 'stop') or ``{"content": ..., "finish_reason": ...}``."""

    def __init__(self, answers: dict[str, str | dict]):
        self.answers = answers
        self.requests: list[dict] = []
        self.auth: list[str | None] = []  # the Authorization header of each request
        self._seen_slow: set[str] = set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.auth.append(self.headers.get("Authorization"))
                question = body["messages"][-1]["content"]
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": "not found"})
                if "坏" in question or ("慢" in question and question not in server._seen_slow):
                    server._seen_slow.add(question)
                    return self._send(500 if "坏" in question else 503, {"error": "unavailable"})
                answer = server.answers.get(question, "")
                if isinstance(answer, str):
                    answer = {"content": answer, "finish_reason": "stop"}
                message = {"role": "assistant", "content": answer["content"]}
                choice = {
                    "index": 0,
                    "message": message,
                    "finish_reason": answer.get("finish_reason", "stop"),
                }
                return self._send(200, {"choices": [choice]})

            def _send(self, status: int, obj: dict) -> None:
                data = json.dumps(obj, ensure_ascii=False).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_chat_server():
    """A factory: ``with fake_chat_server({question: answer}) as server: server.base_url``."""
    return FakeChatServer


def run_spec(spec) -> dict:
    """Write ``spec`` to the lake and run the training engine on it in this process; the success result."""
    from tasks.engine import write_spec
    from tasks.storage import Lake
    from trainers.train import main

    lake = Lake.from_settings()
    spec_uri = write_spec(spec, lake.uri("specs", spec.run_key, "spec.json"))
    rc = main([spec_uri])
    result = lake.read_json(lake.uri("specs", spec.run_key, "result.json"))
    assert rc == 0, result
    assert result["status"] == "success"
    return result
