"""MLflow side of the engines: run tags, flattened params, and the per-step metrics callback."""

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
