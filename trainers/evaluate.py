"""Evaluation engine: answer a test set through an OpenAI-compatible endpoint and score the answers.

    python -m trainers.evaluate SPEC_URI     # SPEC_URI: an EvalSpec JSON (path or lake URI)

Setup (load the first ``max_samples`` records) -> generate (``POST <base_url>/chat/completions`` from a
thread pool of ``concurrency``, with timeouts and retries on connection errors and 5xx) -> score
(``trainers.metrics``) -> record (predictions.jsonl + metrics.json in ``output_uri``, the same and the
metrics in MLflow). Test data: a dataset version directory, a Parquet file or JSONL with canonical
``{system?, context, target}`` records; BELLE's ``{question, std_answer}`` is accepted as a convenience.

A record whose request fails is kept in predictions.jsonl with its error and left out of the metrics;
the run fails only when every request fails.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from tasks.engine import engine_main
from tasks.registry import ensure_experiment
from tasks.specs import Endpoint, EvalSpec, GenerationParams
from tasks.storage import Lake
from tasks.version import code_version
from trainers.data import ChatRecord, DataError, chat_records, read_records
from trainers.metrics import corpus_bleu, rouge_l, sentence_bleu

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("forgeflow.trainers.evaluate")

REQUEST_TIMEOUT_S = 120.0  # one CPU-served answer of a few hundred tokens fits comfortably
CONNECT_TIMEOUT_S = 10.0
MAX_ATTEMPTS = 3
RETRY_BACKOFF_S = 1.0


class EndpointError(RuntimeError):
    """The endpoint could not answer a request (after retries)."""


@dataclass
class Prediction:
    """One evaluated record, as written to predictions.jsonl."""

    index: int
    id: str | None
    question: str
    reference: str
    prediction: str | None
    latency_s: float | None
    error: str | None = None
    rouge_l: float | None = None
    bleu_4: float | None = None


def load_test_records(spec: EvalSpec, lake: Lake) -> tuple[list[ChatRecord], list[str | None]]:
    """The first ``max_samples`` records of the test data and their ids (None when the data has none)."""
    try:
        with lake.fetch(spec.dataset_uri) as path:
            df = read_records(path)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"dataset_uri {spec.dataset_uri}: cannot read it ({type(e).__name__}: {e})") from e
    if spec.max_samples is not None:
        df = df.head(spec.max_samples)
    if df.empty:
        raise DataError(f"dataset_uri {spec.dataset_uri}: no records")
    ids = [str(i) for i in df["id"]] if "id" in df.columns else [None] * len(df)
    return chat_records(df, spec.dataset_uri), ids


def chat_request(spec: EvalSpec, record: ChatRecord) -> dict[str, Any]:
    """The OpenAI chat-completions body for one record."""
    return chat_body(spec.endpoint.model, record.messages(with_target=False), spec.generation)


def chat_body(model: str, messages: list[dict[str, str]], g: GenerationParams) -> dict[str, Any]:
    """The OpenAI chat-completions body: the messages and the sampling parameters (shared with distill)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "temperature": g.temperature,
        "top_p": g.top_p,
        "presence_penalty": g.presence_penalty,
        "max_tokens": g.max_tokens,
        "stream": False,
    }
    if g.seed is not None:
        body["seed"] = g.seed
    return body


@dataclass(frozen=True)
class Completion:
    """The first choice of a chat completion: its text and why generation stopped ('stop', 'length', ...)."""

    text: str
    finish_reason: str | None


def complete(http: httpx.Client, url: str, body: dict[str, Any]) -> str:
    """POST a chat completion, retrying connection errors, timeouts and 5xx; returns the answer text."""
    return complete_choice(http, url, body).text


def complete_choice(http: httpx.Client, url: str, body: dict[str, Any]) -> Completion:
    """POST a chat completion, retrying connection errors, timeouts and 5xx; returns the first choice."""
    import httpx

    last_error = ""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            resp = http.post(url, json=body)
        except (httpx.TransportError, httpx.TimeoutException) as e:
            last_error = f"{type(e).__name__}: {e}"
        else:
            if resp.status_code < 500:
                if resp.status_code >= 400:  # a bad request will not improve with retries
                    raise EndpointError(f"HTTP {resp.status_code} from {url}: {resp.text[:300]}")
                try:
                    choice = resp.json()["choices"][0]
                    return Completion(choice["message"]["content"] or "", choice.get("finish_reason"))
                except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
                    raise EndpointError(f"unexpected response from {url}: {resp.text[:300]}") from e
            last_error = f"HTTP {resp.status_code}: {resp.text[:300]}"
        if attempt < MAX_ATTEMPTS:
            time.sleep(RETRY_BACKOFF_S * attempt)
    raise EndpointError(f"{url} failed after {MAX_ATTEMPTS} attempts: {last_error}")


@contextlib.contextmanager
def endpoint_client(endpoint: Endpoint, concurrency: int) -> Iterator[tuple[httpx.Client, str]]:
    """An HTTP client for ``endpoint`` (bearer key, timeouts, ``concurrency`` connections) and its
    chat-completions URL."""
    import httpx

    url = endpoint.base_url.rstrip("/") + "/chat/completions"
    key = endpoint.bearer_key()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    limits = httpx.Limits(max_connections=concurrency)
    with httpx.Client(headers=headers, timeout=timeout, limits=limits) as http:
        yield http, url


def generate(spec: EvalSpec, records: list[ChatRecord], ids: list[str | None]) -> list[Prediction]:
    """Ask the endpoint for every record, ``spec.concurrency`` requests at a time, in record order."""
    with endpoint_client(spec.endpoint, spec.concurrency) as (http, url):

        def one(i: int) -> Prediction:
            rec = records[i]
            pred = Prediction(i, ids[i], rec.question, rec.target, None, None)
            start = time.perf_counter()
            try:
                pred.prediction = complete(http, url, chat_request(spec, rec))
            except EndpointError as e:
                pred.error = str(e)
            pred.latency_s = round(time.perf_counter() - start, 4)
            return pred

        with ThreadPoolExecutor(max_workers=spec.concurrency, thread_name_prefix="eval") as pool:
            return list(pool.map(one, range(len(records))))


def score(spec: EvalSpec, predictions: list[Prediction]) -> dict[str, float]:
    """Per-record scores in place, and the aggregate metrics over the records that got an answer."""
    ok = [p for p in predictions if p.error is None]
    for p in ok:
        answer = p.prediction or ""
        p.rouge_l = rouge_l(answer, p.reference) if "rouge_l" in spec.metrics else None
        p.bleu_4 = sentence_bleu(answer, p.reference) if "bleu_4" in spec.metrics else None
    metrics: dict[str, float] = {}
    if ok and "rouge_l" in spec.metrics:
        metrics["rouge_l"] = sum(p.rouge_l or 0.0 for p in ok) / len(ok)
    if ok and "bleu_4" in spec.metrics:
        metrics["bleu_4"] = corpus_bleu([p.prediction or "" for p in ok], [p.reference for p in ok])
        metrics["bleu_4_sentence_mean"] = sum(p.bleu_4 or 0.0 for p in ok) / len(ok)
    latencies = sorted(p.latency_s for p in ok if p.latency_s is not None)
    if latencies:
        metrics["latency_mean_s"] = sum(latencies) / len(latencies)
        metrics["latency_p95_s"] = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
    metrics["success_rate"] = len(ok) / len(predictions)
    return metrics


def run(spec: EvalSpec) -> dict[str, Any]:
    """Evaluate as the spec says; returns the result dict that becomes result.json."""
    import mlflow

    # ---- setup
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request drowns the engine log
    lake = Lake.from_settings()
    records, ids = load_test_records(spec, lake)
    log.info("evaluating %d records of %s against %s", len(records), spec.dataset_uri, spec.endpoint.base_url)

    # ---- generate and score
    started = time.perf_counter()
    predictions = generate(spec, records, ids)
    wall_s = time.perf_counter() - started
    failed = [p for p in predictions if p.error is not None]
    if len(failed) == len(predictions):
        raise EndpointError(
            f"all {len(predictions)} requests to {spec.endpoint.base_url} failed; first error: {failed[0].error}. "
            "Check that the service is up and endpoint.model names a model it serves"
        )
    metrics = score(spec, predictions)
    metrics["wall_seconds"] = wall_s

    # ---- record
    out = spec.output_uri.rstrip("/")
    predictions_jsonl = "".join(json.dumps(asdict(p), ensure_ascii=False) + "\n" for p in predictions)
    summary = {"n": len(predictions), "failed": len(failed), "metrics": metrics}
    lake.write_text(f"{out}/predictions.jsonl", predictions_jsonl)
    lake.write_json(f"{out}/metrics.json", summary)

    experiment_id = ensure_experiment(spec.experiment)
    tags = {
        "forgeflow.run_key": spec.run_key,
        "model_ref": spec.model_ref or "",
        "dataset_ref": spec.dataset_ref or spec.dataset_uri,
        "endpoint_model": spec.endpoint.model,
        "code_version": code_version(),
    }
    with mlflow.start_run(experiment_id=experiment_id, run_name=spec.run_key, tags=tags) as active:
        mlflow.log_params(
            {
                "endpoint.base_url": spec.endpoint.base_url,
                "endpoint.model": spec.endpoint.model,
                "dataset_uri": spec.dataset_uri,
                "max_samples": spec.max_samples,
                "concurrency": spec.concurrency,
                **{f"generation.{k}": v for k, v in spec.generation.model_dump().items()},
            }
        )
        mlflow.log_metrics({**metrics, "n": float(len(predictions)), "failed": float(len(failed))})
        mlflow.log_text(predictions_jsonl, "predictions.jsonl")
        mlflow.log_dict(summary, "metrics.json")
        mlflow.log_dict(spec.model_dump(mode="json"), "spec.json")
        run_id = active.info.run_id
    for p in failed[:3]:
        log.warning("record %d failed: %s", p.index, p.error)
    return {
        "mlflow_run_id": run_id,
        "metrics": metrics,
        "n": len(predictions),
        "failed": len(failed),
        "predictions_uri": f"{out}/predictions.jsonl",
    }


def main(argv: list[str] | None = None) -> int:
    return engine_main(EvalSpec, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
