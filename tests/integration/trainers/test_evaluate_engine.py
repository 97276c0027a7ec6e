"""The evaluation engine end to end against a fake OpenAI-compatible server, with real MLflow and lake."""

from __future__ import annotations

import json

import pytest

from tasks.specs import EvalSpec

pytestmark = pytest.mark.slow


def test_evaluate_belle_jsonl_with_failures_and_retries(forgeflow_home, fake_chat_server, monkeypatch):
    import trainers.evaluate as ev
    from tasks.engine import write_spec
    from tasks.registry import client
    from tasks.storage import Lake

    monkeypatch.setattr(ev, "RETRY_BACKOFF_S", 0.01)
    rows = [
        {"question": "中国的首都是哪里？", "std_answer": "中国的首都是北京。", "class": "qa"},
        {"question": "用Python打印你好", "std_answer": "print('你好')", "class": "code"},
        {"question": "慢一点回答：一加一", "std_answer": "一加一等于二。", "class": "math"},
        {"question": "坏掉的问题", "std_answer": "无论如何都答不出。", "class": "qa"},
        {"question": "不会被评估", "std_answer": "超出 max_samples。", "class": "qa"},
    ]
    data = forgeflow_home / "belle.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    answers = {
        "中国的首都是哪里？": "中国的首都是北京。",  # exact
        "用Python打印你好": "print 你好",  # same tokens once punctuation is dropped
        "慢一点回答：一加一": "等于二",  # partial; the first request gets a 503
    }
    lake = Lake.from_settings()
    with fake_chat_server(answers) as server:
        spec = EvalSpec(
            run_key="eval-1",
            endpoint={"base_url": server.base_url, "model": "tiny-chat"},
            dataset_uri=str(data),
            dataset_ref="general/belle@V1",
            model_ref="models:/tiny-chat/1",
            max_samples=4,
            concurrency=2,
            output_uri=lake.uri("evals", "eval-1"),
        )
        uri = write_spec(spec, lake.uri("specs", "eval-1", "spec.json"))
        assert ev.main([uri]) == 0
        requests = list(server.requests)

    result = lake.read_json(lake.uri("specs", "eval-1", "result.json"))
    assert result["status"] == "success" and result["n"] == 4 and result["failed"] == 1
    assert len(requests) == 4 + 1 + 2  # 4 records, one 503 retried once, the 500 retried twice
    assert requests[0]["model"] == "tiny-chat" and requests[0]["messages"][-1]["role"] == "user"

    preds = [json.loads(line) for line in lake.read_text(result["predictions_uri"]).splitlines()]
    assert [p["question"] for p in preds] == [r["question"] for r in rows[:4]]
    assert preds[0]["rouge_l"] == 1.0 and preds[0]["bleu_4"] == pytest.approx(1.0)
    assert preds[1]["rouge_l"] == 1.0
    assert 0 < preds[2]["rouge_l"] < 1 and preds[2]["prediction"] == "等于二"
    assert preds[3]["prediction"] is None and "HTTP 500" in preds[3]["error"]
    assert all(p["latency_s"] is not None for p in preds)
    m = result["metrics"]
    assert m["rouge_l"] == pytest.approx((1 + 1 + preds[2]["rouge_l"]) / 3)
    assert 0 < m["bleu_4"] <= 1 and m["success_rate"] == pytest.approx(0.75)
    assert lake.read_json(lake.uri("evals", "eval-1", "metrics.json"))["metrics"] == m

    run = client().get_run(result["mlflow_run_id"])
    assert run.data.tags["model_ref"] == "models:/tiny-chat/1"
    assert (
        run.data.tags["dataset_ref"] == "general/belle@V1" and run.data.tags["endpoint_model"] == "tiny-chat"
    )
    assert run.data.metrics["rouge_l"] == pytest.approx(m["rouge_l"]) and run.data.metrics["failed"] == 1
    assert {"predictions.jsonl", "metrics.json", "spec.json"} <= {
        a.path for a in client().list_artifacts(run.info.run_id)
    }


def test_evaluate_fails_when_every_request_fails(forgeflow_home, monkeypatch):
    import trainers.evaluate as ev
    from tasks.engine import write_spec
    from tasks.storage import Lake

    monkeypatch.setattr(ev, "RETRY_BACKOFF_S", 0)
    lake = Lake.from_settings()
    spec = EvalSpec(
        run_key="eval-down",
        endpoint={"base_url": "http://127.0.0.1:9/v1", "model": "m"},  # discard port: nothing listens
        dataset_uri=lake.uri("datasets", "sft-eval", "v1"),
        max_samples=2,
        output_uri=lake.uri("evals", "eval-down"),
    )
    uri = write_spec(spec, lake.uri("specs", "eval-down", "spec.json"))
    assert ev.main([uri]) == 1
    result = lake.read_json(lake.uri("specs", "eval-down", "result.json"))
    assert "all 2 requests" in result["error"] and "Check that the service is up" in result["error"]
