"""MLflow side of the engines: run tags, flattened params, the per-step metrics callback, system metrics,
and the training watch (NaN/inf stop, curve diagnosis)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from transformers import TrainerCallback

MAX_PARAM_CHARS = 6000  # MLflow's limit on one param value


def flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts as dotted keys with string values, cut to MLflow's param length."""
    flat: dict[str, str] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_CHARS]
    return flat


def perplexity(loss: float) -> float:
    """exp(loss), capped so a diverged run logs a large number rather than inf."""
    return math.exp(min(loss, 50.0))


class MlflowStepLogger(TrainerCallback):
    """Logs loss, learning rate, grad norm, epoch and real-token throughput at every Trainer log step.

    Throughput counts non-padding tokens (``include_num_input_tokens_seen='non_padding'``) over the wall
    time between two logs, so it includes data loading and optimizer time: what a user waits for.
    ``extra_prefixes`` adds the method's own log keys (DPO's ``rewards/...``, a reward model's
    ``eval_accuracy``); ``with_perplexity`` is off for preference losses, where exp(loss) means nothing.
    """

    STEP_KEYS = ("loss", "learning_rate", "grad_norm", "epoch")

    def __init__(
        self, client: Any, run_id: str, extra_prefixes: tuple[str, ...] = (), with_perplexity: bool = True
    ):
        self.client = client
        self.run_id = run_id
        self.extra_prefixes = tuple(extra_prefixes)
        self.with_perplexity = with_perplexity
        self._last_time = time.perf_counter()
        self._last_tokens = 0
        self.last_tokens_per_second: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_time = time.perf_counter()
        self._last_tokens = state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kwargs):
        from mlflow.entities import Metric

        logs = logs or {}
        now_ms = int(time.time() * 1000)
        metrics = {k: float(logs[k]) for k in self.STEP_KEYS if isinstance(logs.get(k), int | float)}
        if self.extra_prefixes:
            metrics.update(
                {
                    k: float(v)
                    for k, v in logs.items()
                    if k.startswith(self.extra_prefixes) and isinstance(v, int | float)
                }
            )
        if "loss" in logs:
            now = time.perf_counter()
            tokens = state.num_input_tokens_seen
            if now > self._last_time and tokens > self._last_tokens:
                self.last_tokens_per_second = (tokens - self._last_tokens) / (now - self._last_time)
                metrics["tokens_per_second"] = self.last_tokens_per_second
            self._last_time, self._last_tokens = now, tokens
        if isinstance(logs.get("eval_loss"), int | float):
            metrics["eval_loss"] = float(logs["eval_loss"])
            if self.with_perplexity:
                metrics["perplexity"] = perplexity(metrics["eval_loss"])
        batch = [Metric(k, v, now_ms, state.global_step) for k, v in metrics.items() if math.isfinite(v)]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch, synchronous=True)


DIAGNOSIS_TAG = "forgeflow.diagnosis"
DIAGNOSIS_ARTIFACT = "diagnosis.json"
DEFAULT_SYSTEM_METRICS_INTERVAL_S = 5.0


def configure_system_metrics(default_interval_s: float = DEFAULT_SYSTEM_METRICS_INTERVAL_S) -> None:
    """Sample CPU/memory/disk/network (and GPUs when nvidia-ml-py is installed) every few seconds.

    MLflow's default of 10 s leaves a short run with one point or none; 5 s gives a 24-hour run ~17k
    samples. ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` (seconds) overrides it.
    """
    import os

    import mlflow

    if not os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"):
        mlflow.set_system_metrics_sampling_interval(default_interval_s)


class TrainingWatch(TrainerCallback):
    """Watches each logged loss and grad norm: stops a diverged run, and diagnoses the curve at the end.

    ``nan_patience`` consecutive non-finite logs stop training with ``TrainingDiverged`` (one may be a bad
    batch an fp16 loss scaler skips; after two the weights are gone). Findings go to the MLflow run as
    ``diagnosis.json`` and the ``forgeflow.diagnosis`` tag, and ``finalize`` returns them for result.json.
    """

    def __init__(self, client: Any, run_id: str | None, nan_patience: int = 2):
        from trainers.diagnose import MetricPoint

        self.client = client
        self.run_id = run_id
        self.nan_patience = nan_patience
        self.history: list[MetricPoint] = []
        self._non_finite = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        from trainers.diagnose import MetricPoint, TrainingDiverged, diagnose_history

        logs = logs or {}
        if not isinstance(logs.get("loss"), int | float):
            return
        point = MetricPoint(
            step=state.global_step,
            loss=float(logs["loss"]),
            grad_norm=float(logs["grad_norm"]) if isinstance(logs.get("grad_norm"), int | float) else None,
            learning_rate=float(logs["learning_rate"])
            if isinstance(logs.get("learning_rate"), int | float)
            else None,
        )
        self.history.append(point)
        self._non_finite = 0 if point.finite else self._non_finite + 1
        if self._non_finite >= self.nan_patience:
            self.report(diagnose_history(self.history))
            raise TrainingDiverged(
                f"training stopped at step {point.step}: the loss is {point.loss} (grad norm "
                f"{point.grad_norm}, learning rate {point.learning_rate}) for {self._non_finite} consecutive "
                "log steps. Lower hyperparams.learning_rate, raise warmup_ratio, train in bf16 rather than fp16, "
                f"or check the data trained just before step {point.step}"
            )

    def finalize(self, eval_loss: float | None = None) -> list[dict[str, Any]]:
        """Diagnose the whole curve (with the final eval loss), record it in MLflow, return the findings."""
        from trainers.diagnose import diagnose_history

        findings = diagnose_history(self.history, eval_loss=eval_loss)
        self.report(findings)
        return [f.to_dict() for f in findings]

    def report(self, findings: list[Any]) -> None:
        """diagnosis.json and the tag on the run; a tracking failure only warns (training matters more)."""
        import logging
        from dataclasses import asdict

        from trainers.diagnose import THRESHOLDS, summary_tag

        if self.run_id is None:  # a rank other than 0 under torchrun: rank 0 records
            return
        try:
            self.client.log_dict(
                self.run_id,
                {
                    "findings": [f.to_dict() for f in findings],
                    "log_points": len(self.history),
                    "thresholds": asdict(THRESHOLDS),
                },
                DIAGNOSIS_ARTIFACT,
            )
            self.client.set_tag(self.run_id, DIAGNOSIS_TAG, summary_tag(findings))
        except Exception as e:
            logging.getLogger("forgeflow.trainers.tracking").warning("could not record the diagnosis: %s", e)
