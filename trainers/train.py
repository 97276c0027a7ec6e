"""Training engine: every method of trainers/methods.py on the transformers Trainer, tracked in MLflow.

    python -m trainers.train SPEC_URI        # SPEC_URI: a TrainSpec JSON (path or lake URI)

Reads top to bottom: setup (method check, seed, MLflow run) -> data (dataset version -> token blocks or
masked chat examples) -> model (the tiny Llama with a tokenizer trained on the data, or a base model,
optionally with LoRA) -> Trainer -> save (a servable Hugging Face directory at ``<output_uri>/model``,
logged to MLflow and registered when ``register_as`` is set). ``result.json`` lands beside the spec.

Checkpoints land complete in ``<output_uri>/checkpoints/`` as they are saved; ``resume`` starts from one
(weights only, continue, continue skipping N samples) and SIGTERM stops at the next step with one
(trainers/checkpoints.py).

Distributed runs (``spec.distributed``: torchrun processes, nodes, DeepSpeed ZeRO) run this same code on
every rank; only rank 0 talks to MLflow, saves the model, registers and reports (trainers/distributed.py),
while every node publishes its part of each checkpoint.

A rerun with the same ``run_key`` returns the finished run's result instead of training again, so a
retried Airflow task never registers a second model version.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.engine import engine_main
from tasks.models import pin_model_ref
from tasks.registry import client, ensure_experiment, fetch_model, register_model_dir
from tasks.specs import HyperParams, TrainSpec
from tasks.storage import Lake
from tasks.version import code_version
from trainers import checkpoints as ckpt
from trainers import distributed
from trainers.data import DataError, read_records, train_tokenizer
from trainers.methods import METHODS, UnsupportedMethodError, get_method
from trainers.modeling import count_parameters, save_model_dir
from trainers.templates import choose_chat_template
from trainers.tracking import MlflowStepLogger, TrainingWatch, configure_system_metrics, flatten, perplexity

if TYPE_CHECKING:
    import pandas as pd
    from transformers import TrainingArguments

log = logging.getLogger("forgeflow.trainers.train")

RESULT_ARTIFACT = "result.json"
RUN_KEY_TAG = "forgeflow.run_key"
RETRAIN_OF_TAG = "forgeflow.retrain_of"
__all__ = ["METHODS", "UnsupportedMethodError", "main", "run", "training_arguments"]


# ---------------------------------------------------------------- spec -> TrainingArguments


def training_arguments(hp: HyperParams, output_dir: Path, **overrides: Any) -> TrainingArguments:
    """TrainingArguments from the spec's hyperparameters (cosine decays to LR x min_lr_ratio).

    ``overrides`` (from trainers.distributed.setup: deepspeed, ddp_backend, ...) replace the defaults.
    """
    import torch
    from transformers import TrainingArguments

    scheduler, scheduler_kwargs = hp.lr_scheduler, {}
    if hp.lr_scheduler == "cosine":
        scheduler, scheduler_kwargs = "cosine_with_min_lr", {"min_lr_rate": hp.min_lr_ratio}
    cuda = torch.cuda.is_available()
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        num_train_epochs=hp.epochs,
        max_steps=hp.max_steps,
        per_device_train_batch_size=hp.batch_size,
        per_device_eval_batch_size=hp.batch_size,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        learning_rate=hp.learning_rate,
        lr_scheduler_type=scheduler,
        lr_scheduler_kwargs=scheduler_kwargs,
        # A float in [0, 1) is a ratio of the total steps in transformers 5.
        warmup_steps=float(hp.warmup_ratio),
        weight_decay=hp.weight_decay,
        optim="adamw_torch",
        max_grad_norm=1.0,
        seed=hp.seed,
        data_seed=hp.seed,
        logging_strategy="steps",
        logging_steps=hp.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # a NaN loss must show in the logs: TrainingWatch stops on it
        save_strategy=hp.save_strategy,
        save_steps=hp.save_steps,
        save_total_limit=hp.save_total_limit,
        eval_strategy="no",  # one evaluation at the end keeps CPU runs short
        include_num_input_tokens_seen="non_padding",
        use_cpu=not cuda,
        bf16=cuda and torch.cuda.is_bf16_supported(),  # mixed precision; saved weights stay float32
        dataloader_num_workers=0,
        remove_unused_columns=False,
        report_to="none",  # this engine logs to MLflow itself
        disable_tqdm=True,
    )
    return TrainingArguments(**{**kwargs, **overrides})


# ---------------------------------------------------------------- data


def load_frame(lake: Lake, uri: str, what: str) -> pd.DataFrame:
    try:
        with lake.fetch(uri) as path:
            df = read_records(path)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{what} {uri}: cannot read it ({type(e).__name__}: {e})") from e
    if df.empty:
        raise DataError(f"{what} {uri}: no records")
    return df


# ---------------------------------------------------------------- MLflow helpers


def finished_result(experiment_id: str, run_key: str) -> dict[str, Any] | None:
    """The result of an earlier finished run with this run key, if any (idempotent retries)."""
    import mlflow

    if "'" in run_key:  # cannot be quoted in an MLflow filter; such keys are never reused by Airflow
        return None
    runs = client().search_runs(
        [experiment_id],
        filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return None
    try:
        path = mlflow.artifacts.download_artifacts(run_id=runs[0].info.run_id, artifact_path=RESULT_ARTIFACT)
    except Exception:  # finished without a result (e.g. killed between the last two calls): train again
        return None
    return json.loads(Path(path).read_text())


def experiment_and_previous(spec: TrainSpec) -> tuple[str, dict[str, Any] | None]:
    """The experiment id and, when this run key already finished, its result (rank 0 asks MLflow)."""
    experiment_id = ensure_experiment(spec.experiment)
    return experiment_id, finished_result(experiment_id, spec.run_key)


def log_dataset_input(df: pd.DataFrame, source: str, name: str) -> None:
    """Record the training data as an MLflow dataset input (lineage); a failure only warns."""
    import mlflow

    try:
        # List/struct columns are not hashable for MLflow's digest; their JSON text is.
        flat = df.copy()
        for col in flat.columns:
            if flat[col].map(lambda v: not isinstance(v, str | int | float | bool | type(None))).any():
                flat[col] = flat[col].map(lambda v: json.dumps(v, ensure_ascii=False, default=str))
        with warnings.catch_warnings():  # a file:// source matches two equivalent MLflow source types
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(flat, source=source, name=name)
        mlflow.log_input(dataset, context="training")
    except Exception as e:
        log.warning("could not log the dataset input to MLflow (lineage only): %s", e)


# ---------------------------------------------------------------- the engine


def run(spec: TrainSpec) -> dict[str, Any]:
    """Train as the spec says; returns the result dict that becomes result.json."""
    import mlflow
    import torch
    from transformers import set_seed

    # ---- setup
    method = get_method(spec.method)
    hp = spec.hyperparams
    lake = Lake.from_settings()
    dist_args = distributed.setup(spec.distributed)
    main = distributed.is_main_process()
    experiment_id, previous = distributed.on_main(experiment_and_previous, spec)
    if previous is not None:
        log.info(
            "run_key %s already finished in experiment %s; returning its result",
            spec.run_key,
            spec.experiment,
        )
        return previous
    resume = ckpt.prepare_resume(lake, spec)
    set_seed(hp.seed)

    # ---- data
    train_df = load_frame(lake, spec.train_uri, "train_uri")
    if spec.max_records:
        train_df = train_df.head(spec.max_records)
    eval_df = load_frame(lake, spec.eval_uri, "eval_uri") if spec.eval_uri else None
    # distill: the teacher writes the answers, once (rank 0), and every rank trains on the same ones
    sourced = distributed.on_main(method.source, spec, lake, train_df, eval_df)
    train_df, eval_df = sourced.train, sourced.eval

    # ---- model
    # 'models:/NAME/latest' is pinned now, so the run, the model version and a later adapter merge name the
    # exact base version this run started from (resumed: the base its checkpoint was trained on).
    base_ref = ckpt.resumed_base_ref(resume, spec) or (
        spec.base_model if spec.base_model == "tiny" else pin_model_ref(spec.base_model)
    )
    if start := ckpt.start_model(resume, method):  # weights_only: the checkpoint is the base
        (model, tokenizer), base_path = start, None
    elif spec.base_model == "tiny":
        # trained once on rank 0 and sent to the others: every rank must hold the same vocabulary
        tokenizer = ckpt.checkpoint_tokenizer(resume) or distributed.on_main(
            lambda: train_tokenizer(method.corpus(train_df, spec.train_uri), spec.tiny.vocab_size)
        )
        model = method.build_tiny(spec, tokenizer)
        base_path = None
    else:
        with distributed.local_main_first():  # one download per node, then the others hit the cache
            base_path = fetch_model(base_ref)
        model, tokenizer = method.load_base(base_path)
    template = choose_chat_template(tokenizer, spec.chat_template)
    data = method.prepare(spec, tokenizer, train_df, eval_df)
    model = method.build(spec, model)
    ckpt.load_start_adapter(resume, model)
    trainable, total = count_parameters(model)
    log.info("model: %s trainable of %s parameters; data: %s", f"{trainable:,}", f"{total:,}", data.stats)

    c = client()
    tags = {
        RUN_KEY_TAG: spec.run_key,
        "method": spec.method,
        "dataset_ref": spec.dataset_ref or spec.train_uri,
        "base_model": base_ref,
        "code_version": code_version(),
    }
    if spec.retrain_of:
        tags[RETRAIN_OF_TAG] = spec.retrain_of
    run_tags = tags | ckpt.resume_tags(resume)
    if main:
        configure_system_metrics()
    run_context = (
        mlflow.start_run(
            experiment_id=experiment_id, run_name=spec.run_key, tags=run_tags, log_system_metrics=True
        )
        if main
        else nullcontext()
    )
    with run_context as active:
        run_id = active.info.run_id if main else None
        if main:
            ckpt.copy_metric_history(c, resume, run_id)
            ckpt.end_interrupted_run(c, resume, run_id)  # a SIGKILL left it RUNNING
        world_size = distributed.world().world_size  # each optimizer step takes a batch from every rank
        steps_per_epoch = math.ceil(
            len(data.train) / (hp.batch_size * hp.gradient_accumulation_steps * world_size)
        )
        total_steps = hp.max_steps if hp.max_steps > 0 else math.ceil(hp.epochs * steps_per_epoch)
        resolved = {
            "total_steps": total_steps,
            "warmup_steps": math.ceil(hp.warmup_ratio * total_steps),
            "min_learning_rate": hp.learning_rate * hp.min_lr_ratio if hp.lr_scheduler == "cosine" else None,
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "world_size": world_size,
            "vocab_size": len(tokenizer),
            "chat_template": template,
            "trainable_parameters": trainable,
            "total_parameters": total,
            **data.stats,
        }
        if main:
            mlflow.log_params({**flatten(spec.redacted()), **flatten(resolved, "resolved.")})
            mlflow.log_dict(spec.redacted(), "spec.json")
            if sourced.metrics:
                mlflow.log_metrics(sourced.metrics, step=0)
            for artifact_file, text in sourced.texts.items():
                mlflow.log_text(text, artifact_file)
            log_dataset_input(train_df, spec.train_uri, spec.dataset_ref or spec.train_uri)

        # ---- Trainer
        with lake.stage(spec.output_uri) as out:
            callbacks = []
            if main:
                callbacks.append(
                    MlflowStepLogger(
                        c, run_id, method.extra_metrics, with_perplexity=method.objective == "lm"
                    )
                )
            saver = ckpt.CheckpointCallback(lake, spec, run_id, resume, base_ref=base_ref)
            # every rank watches (the logged loss is all-reduced, so all stop together); rank 0 records
            watch = TrainingWatch(c, run_id)
            callbacks += [saver, watch]
            args = training_arguments(hp, saver.local_dir, **dist_args)
            trainer = method.trainer(spec, model, tokenizer, data, args, callbacks)
            train_output = ckpt.train(trainer, resume, saver)
            ckpt.raise_if_stopped(saver)  # a stop request: checkpoint saved, nothing exported or registered
            eval_output = trainer.evaluate() if data.eval is not None else {}
            eval_loss = eval_output.get("eval_loss")

            # ---- save (rank 0, with the whole model in hand: ZeRO-3 gathers it on every rank)
            def save() -> str:
                checkpoints = out / "checkpoints"
                if checkpoints.is_dir() and not any(checkpoints.iterdir()):  # save_strategy 'no'
                    checkpoints.rmdir()
                forgeflow = {
                    "spec": spec.redacted(),
                    "resolved": resolved,
                    "mlflow_run_id": run_id,
                    "base_model": base_ref,
                    "base_model_path": str(base_path) if base_path else None,
                    "code_version": tags["code_version"],
                }
                model_dir = out / "model"
                exported = method.export(spec, trainer, tokenizer, out)
                for artifact_path, local in exported.extra_dirs.items():
                    mlflow.log_artifacts(str(local), artifact_path)
                forgeflow["format"] = exported.format
                forgeflow.update(exported.meta)
                save_model_dir(exported.model, tokenizer, model_dir, forgeflow)
                mlflow.log_artifacts(str(model_dir), "model")
                return exported.format

            with distributed.full_weights(trainer):
                model_format = distributed.on_main(save)

        # ---- metrics and registration (rank 0; every rank returns its result)
        def finish() -> dict[str, Any]:
            runtime = float(train_output.metrics.get("train_runtime", 0.0))
            tokens = int(trainer.state.num_input_tokens_seen)
            metrics = {
                "train_loss": float(train_output.training_loss),
                "eval_loss": float(eval_loss) if eval_loss is not None else None,
                "perplexity": perplexity(eval_loss)
                if eval_loss is not None and method.objective == "lm"
                else None,
                "tokens_per_second": tokens / runtime if runtime > 0 else None,
                **{k: float(v) for k, v in eval_output.items() if k.startswith(method.extra_metrics)},
            }
            # eval_loss and perplexity were logged by the step logger when trainer.evaluate() reported them.
            final_metrics = {
                "train_loss": metrics["train_loss"],
                "train_runtime": runtime,
                "train_tokens_seen": float(tokens),
                "train_tokens_per_second": metrics["tokens_per_second"] or 0.0,  # whole-run average
            }
            mlflow.log_metrics(final_metrics, step=trainer.state.global_step)

            version = None
            if spec.register_as:
                version = register_model_dir(
                    run_id,
                    "model",
                    spec.register_as,
                    description=f"{spec.method} of {base_ref} on {spec.dataset_ref or spec.train_uri}",
                    tags={k: v for k, v in tags.items() if k != RUN_KEY_TAG}
                    | {"run_key": spec.run_key, "format": model_format},
                )
            result: dict[str, Any] = {
                "mlflow_run_id": run_id,
                "experiment_id": experiment_id,
                "model_uri": f"{spec.output_uri.rstrip('/')}/model",
                "registered_model": spec.register_as,
                "model_version": version,
                "steps": trainer.state.global_step,
                "metrics": metrics,
                "distributed": distributed.describe(trainer, spec.distributed),
                "diagnosis": watch.finalize(eval_loss),
            }
            if spec.method == "pretrain":
                result["packing_waste"] = data.stats["packing_waste"]
            if sourced.metrics:
                result["data_metrics"] = sourced.metrics
            # Logged last: its presence marks the run complete for finished_result().
            mlflow.log_dict(result, RESULT_ARTIFACT)
            return result

        result = distributed.on_main(finish)
    return result


def main(argv: list[str] | None = None) -> int:
    try:
        with ckpt.stop_signals():  # SIGTERM: checkpoint at the next step boundary, then a 'stopped' result
            return engine_main(TrainSpec, run, argv)
    finally:
        distributed.teardown()


if __name__ == "__main__":
    raise SystemExit(main())
