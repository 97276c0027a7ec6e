"""Pydantic contracts between DAG tasks and engines.

A task writes a spec (JSON) into the lake; the engine runs ``python -m <engine> SPEC_URI`` locally or in a
pod, and writes ``result.json`` beside the spec. Both sides validate with these models, so a bad field is
reported by name before any work starts.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
Usage = Literal["pretrain", "sft", "rl", "reward_model", "model_test"]
Method = Literal["pretrain", "sft_full", "sft_lora", "prompt_tuning", "reward_model", "dpo", "distill"]
InputFormat = Literal[
    "auto", "jsonl", "json", "csv", "parquet", "txt", "alpaca", "sharegpt", "openai", "csv_qa", "preference"
]
Modality = Literal["text", "image"]
# What each input format holds (the DAG's Params form and the CLI show it).
FORMAT_HELP: dict[str, str] = {
    "auto": "picked from the file suffix (.jsonl .json .csv .parquet .txt)",
    "jsonl": "canonical records, one JSON object per line",
    "json": "canonical records as a JSON array (or JSON Lines)",
    "csv": "canonical records as CSV columns (use field_map for other headers)",
    "parquet": "canonical records as Parquet columns",
    "txt": "plain text, one document per line (pretrain)",
    "alpaca": "{instruction, input, output, system?, history?}",
    "sharegpt": "{conversations: [{from, value}], system?}",
    "openai": "{messages: [{role, content}]}",
    "csv_qa": "CSV with question/answer columns (also 问题/答案, query/response), at most 50 MB a file",
    "preference": "{prompt | conversations | messages, chosen, rejected} pairs -> ranking (reward_model)",
}


def check_name(value: str, what: str = "name") -> str:
    """Seed naming rule: lowercase letters, digits and '-', starting and ending with a letter or digit."""
    if not NAME_RE.match(value) or len(value) > 63:
        raise ValueError(
            f"{what} {value!r} is invalid: use lowercase letters, digits and '-', "
            "starting and ending with a letter or digit (at most 63 characters)"
        )
    return value


def slug(value: str) -> str:
    """Turn any run id (e.g. Airflow's 'manual__2026-01-01T00:00:00+00:00') into a valid name."""
    s = re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-")
    return s[:63].strip("-") or "run"


class Spec(BaseModel):
    """Fields every engine spec has."""

    model_config = ConfigDict(extra="forbid")

    run_key: str = Field(description="Idempotency key of the run (an Airflow run id, or any unique string).")


# ---------------------------------------------------------------- data engine


class InputSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    uri: str = Field(description="File, directory or lake URI of the raw data.")
    format: InputFormat = Field(default="auto", description="Input format; auto picks from the suffix.")
    field_map: dict[str, str] = Field(
        default_factory=dict,
        description="Canonical field -> source field, e.g. {'context': 'question', 'target': 'std_answer'}. "
        "List-valued source fields are joined with newlines.",
    )
    source: str | None = Field(default=None, description="Source label stored in each record's meta.")
    encoding: Literal["utf-8", "gb18030"] = Field(
        default="utf-8",
        description="Text encoding of the files. With utf-8 (the default) a line that is not valid UTF-8 is "
        "quarantined; gb18030 (a superset of GBK and GB2312) reads Chinese legacy files on purpose "
        "(JSON Lines, JSON and TXT; CSV must be UTF-8).",
    )


class OperatorStep(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Operator name from the spark_ops catalogue, e.g. 'normalize'.")
    params: dict[str, Any] = Field(default_factory=dict, description="Operator parameters.")


class SparkResources(BaseModel):
    """Spark resources with the seed's defaults and constraints (REQUIREMENTS §1)."""

    model_config = ConfigDict(extra="forbid")

    num_executors: int = Field(default=2, ge=1, description="Number of executors (spark.executor.instances).")
    executor_cores: int = Field(default=2, ge=1, description="Cores per executor.")
    executor_memory_gb: int = Field(default=4, ge=1, description="Memory per executor in GB.")
    driver_cores: int = Field(default=2, ge=1, description="Driver cores.")
    driver_memory_gb: int = Field(default=4, ge=1, description="Driver memory in GB.")
    conf: dict[str, str] = Field(default_factory=dict, description="Extra Spark confs, name -> value.")

    @model_validator(mode="after")
    def _seed_constraints(self) -> SparkResources:
        for role, cores, mem in (
            ("executor", self.executor_cores, self.executor_memory_gb),
            ("driver", self.driver_cores, self.driver_memory_gb),
        ):
            if not 2 * cores <= mem <= 4 * cores:
                raise ValueError(
                    f"{role} cores:memory must be between 1:2 and 1:4 GB; got {cores} cores, {mem} GB"
                )
        total = self.num_executors * self.executor_memory_gb
        if not 4 <= total <= 16:
            raise ValueError(f"num_executors x executor_memory_gb must be between 4 and 16 GB; got {total}")
        return self


class ProcessSpec(Spec):
    """Import raw inputs onto the canonical schema, run an operator recipe, write Parquet + manifest."""

    inputs: list[InputSource] = Field(min_length=1, description="Raw inputs, read in order.")
    usage: Usage = Field(description="What the data is for; decides the canonical schema.")
    modality: Modality = Field(
        default="text",
        description="text, or image for vision Q&A (usage sft, rl or model_test): records then carry an "
        "'image' column, a path relative to the input file, an absolute path or a URI.",
    )
    labelled: bool = Field(
        default=True,
        description="False for unlabelled data (the question only): target (answers for reward_model) may "
        "be missing, e.g. for pre-annotation.",
    )
    operators: list[OperatorStep] = Field(default_factory=list, description="Ordered operator recipe.")
    spark: SparkResources = Field(default_factory=SparkResources)
    output_uri: str = Field(description="Lake directory the engine writes data/ and manifest.json into.")
    max_reject_ratio: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Fail the import when more than this share of records is rejected.",
    )

    @model_validator(mode="after")
    def _vision_usage(self) -> ProcessSpec:
        if self.modality == "image" and self.usage not in ("sft", "rl", "model_test"):
            raise ValueError(
                f"modality image (question + image -> answer) needs usage sft, rl or model_test; got {self.usage}"
            )
        return self


# ---------------------------------------------------------------- training engine


# Head sizes vLLM's CPU attention supports (vllm/v1/attention/backends/cpu_attn.py, vLLM 0.32).
VLLM_CPU_HEAD_SIZES = frozenset({32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512})


class TinyModelConfig(BaseModel):
    """A Llama built from config, for the embedded default and tests."""

    model_config = ConfigDict(extra="forbid")

    hidden_size: int = Field(default=256, ge=16, description="Hidden size.")
    intermediate_size: int = Field(default=688, ge=16, description="MLP size.")
    num_hidden_layers: int = Field(default=4, ge=1, description="Decoder layers.")
    num_attention_heads: int = Field(
        default=4, ge=1, description="Attention heads (head dim = hidden/heads)."
    )
    num_key_value_heads: int = Field(default=4, ge=1, description="Key/value heads (GQA when fewer).")
    vocab_size: int = Field(default=8000, ge=256, description="Vocabulary of the locally trained tokenizer.")
    max_position_embeddings: int = Field(default=512, ge=32, description="Longest context.")

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModelConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        head = self.hidden_size // self.num_attention_heads
        if head not in VLLM_CPU_HEAD_SIZES:
            raise ValueError(
                f"head size hidden_size/num_attention_heads = {head} cannot be served by vLLM's CPU build; "
                f"use one of {sorted(VLLM_CPU_HEAD_SIZES)}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be divisible by num_key_value_heads")
        return self


class HyperParams(BaseModel):
    """Training hyperparameters; the DAG Params form shows the same descriptions."""

    model_config = ConfigDict(extra="forbid")

    epochs: float = Field(default=3, gt=0, le=50, description="Passes over the training data (1-50).")
    max_steps: int = Field(default=-1, description="Stop after this many optimizer steps (-1: use epochs).")
    batch_size: int = Field(default=8, ge=1, le=1024, description="Per-device batch size.")
    gradient_accumulation_steps: int = Field(default=1, ge=1, description="Micro-batches per optimizer step.")
    learning_rate: float = Field(
        default=2e-5, ge=1e-6, le=5e-4, description="Peak learning rate (seed range 1e-6 to 5e-4)."
    )
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        default="cosine", description="Learning-rate schedule after warmup."
    )
    warmup_ratio: float = Field(default=0.01, ge=0, le=0.5, description="Share of steps spent warming up.")
    min_lr_ratio: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Decay floor of the cosine schedule: min LR = LR x ratio (linear decays to 0).",
    )
    weight_decay: float = Field(default=0.1, ge=0, le=1, description="AdamW weight decay.")
    optimizer: Literal["adamw"] = Field(default="adamw", description="Optimizer.")
    max_seq_length: int = Field(default=256, ge=16, le=32768, description="Tokens per training sequence.")
    lora_r: int = Field(default=8, ge=1, le=256, description="LoRA rank.")
    lora_alpha: int = Field(default=16, ge=1, description="LoRA alpha (scale = alpha / r).")
    lora_dropout: float = Field(default=0.05, ge=0, lt=1, description="LoRA dropout.")
    seed: int = Field(default=42, description="Random seed.")
    logging_steps: int = Field(default=5, ge=1, description="Log metrics every N steps.")
    save_strategy: Literal["no", "steps", "epoch"] = Field(
        default="no",
        description="Checkpoints: 'no' (off; a stop request still saves one), 'steps' (every save_steps "
        "optimizer steps) or 'epoch' (after each pass). Each lands complete in "
        "<output_uri>/checkpoints/checkpoint-<step> as it is saved, so a crash loses at most the steps "
        "since the last one.",
    )
    save_steps: int = Field(
        default=500, ge=1, description="Checkpoint every N optimizer steps (strategy 'steps')."
    )
    save_total_limit: int | None = Field(
        default=2,
        ge=1,
        description="Checkpoints kept (save_strategy 'no' is off): N keeps the newest N, in the lake too; "
        "None (empty) keeps all.",
    )
    num_virtual_tokens: int = Field(
        default=20,
        ge=1,
        le=512,
        description="Prompt tuning: trainable virtual tokens put before every input (1-512); only they train, "
        "the base model stays frozen.",
    )
    prompt_tuning_init: Literal["random", "text"] = Field(
        default="random",
        description="Prompt tuning: start the virtual tokens from random vectors, or from the token embeddings "
        "of prompt_tuning_init_text (usually converges faster).",
    )
    prompt_tuning_init_text: str | None = Field(
        default=None,
        description="Prompt tuning: the text whose token embeddings start the virtual tokens (repeated or cut "
        "to num_virtual_tokens), e.g. a task instruction; needed when prompt_tuning_init is 'text'.",
    )
    dpo_beta: float = Field(
        default=0.1,
        gt=0,
        le=5,
        description="DPO: how strongly the policy is held to the reference model (0-5; higher stays closer, "
        "typical 0.1-0.5).",
    )
    dpo_loss_type: Literal["sigmoid", "ipo", "hinge"] = Field(
        default="sigmoid",
        description="DPO: preference loss; sigmoid is the DPO paper's, ipo (IPO) resists overfitting to "
        "deterministic preferences, hinge is the SLiC loss.",
    )

    @model_validator(mode="after")
    def _init_text_given(self) -> HyperParams:
        if self.prompt_tuning_init == "text" and not (self.prompt_tuning_init_text or "").strip():
            raise ValueError(
                "prompt_tuning_init 'text' needs prompt_tuning_init_text (e.g. the task instruction); "
                "set it or use prompt_tuning_init 'random'"
            )
        return self


METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    # Seed defaults (REQUIREMENTS §2): pretrain epochs 1, batch 32, lr 5e-6; SFT epochs 3, batch 8, lr 2e-5.
    "pretrain": {"epochs": 1, "batch_size": 32, "learning_rate": 5e-6},
    "sft_full": {"epochs": 3, "batch_size": 8, "learning_rate": 2e-5},
    "sft_lora": {"epochs": 3, "batch_size": 8, "learning_rate": 2e-5},
    "prompt_tuning": {"epochs": 3, "batch_size": 8, "learning_rate": 2e-5},
    "reward_model": {"epochs": 1, "batch_size": 8, "learning_rate": 2e-5},
    "dpo": {"epochs": 1, "batch_size": 8, "learning_rate": 5e-6},
    "distill": {"epochs": 3, "batch_size": 8, "learning_rate": 2e-5, "warmup_ratio": 0.1},
}


def default_hyperparams(method: str, **overrides: Any) -> HyperParams:
    """Hyperparameters with the seed defaults of ``method``, then ``overrides``."""
    return HyperParams(**{**METHOD_DEFAULTS.get(method, {}), **overrides})


# Refusals a teacher writes instead of an answer (case-insensitive regular expressions, English and Chinese).
DEFAULT_REFUSAL_PATTERNS = [
    r"\bas an ai( language)? model\b",
    r"\bI('m| am) (sorry|afraid),? (but )?I (can(no|')t|am unable|won't)",
    r"\bI (can(no|')t|am unable to|won't) (help|assist|provide|answer|comply)",
    r"作为(一个)?(人工智能|AI|语言模型)",
    r"(抱歉|对不起|很遗憾)[，,]?\s*我(无法|不能|没办法)",
    r"我(无法|不能)(回答|提供|协助|帮助)",
]


class AnswerRules(BaseModel):
    """Checks every teacher answer passes before it becomes training data (distillation)."""

    model_config = ConfigDict(extra="forbid")

    min_chars: int = Field(default=1, ge=1, description="Shortest answer kept, in characters (after strip).")
    max_chars: int = Field(default=8000, ge=1, description="Longest answer kept, in characters.")
    reject_truncated: bool = Field(
        default=True,
        description="Reject answers the endpoint cut at max_tokens (finish_reason 'length').",
    )
    refusal_patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_REFUSAL_PATTERNS),
        description="Case-insensitive regular expressions; an answer matching any is a refusal and rejected.",
    )
    max_repeat_ratio: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Largest share of repeated 10-character windows (a looping answer scores near 1; "
        "normal prose near 0).",
    )
    match_language: bool = Field(
        default=False,
        description="Reject answers whose language (zh / en / other, from character classes as tag_language "
        "does) differs from the question's.",
    )

    @field_validator("refusal_patterns")
    @classmethod
    def _compiles(cls, v: list[str]) -> list[str]:
        for pattern in v:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"refusal pattern {pattern!r} is not a valid regular expression: {e}") from e
        return v

    @model_validator(mode="after")
    def _bounds(self) -> AnswerRules:
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) is larger than max_chars ({self.max_chars})")
        return self


class DistillConfig(BaseModel):
    """How distillation asks the teacher, which answers it keeps, and how the student trains."""

    model_config = ConfigDict(extra="forbid")

    generation: GenerationParams = Field(
        default_factory=lambda: GenerationParams(max_tokens=512),
        description="Sampling parameters of the teacher's answers.",
    )
    concurrency: int = Field(default=4, ge=1, le=64, description="Teacher requests in flight.")
    rules: AnswerRules = Field(default_factory=AnswerRules)
    min_accept_ratio: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Fail the run when fewer than this share of the questions get an accepted answer.",
    )
    student: Literal["full", "lora"] = Field(
        default="full",
        description="Train the student like sft_full (every weight) or sft_lora (an adapter, merged unless "
        "merge_lora is off).",
    )


ResumeMode = Literal["weights_only", "continue", "continue_skip"]


class ResumeSpec(BaseModel):
    """Start a run from a checkpoint (REQUIREMENTS §2: weights only, continue, continue skipping N).

    The resumed run is a new MLflow run, tagged ``forgeflow.resumed_from_run`` / ``_checkpoint`` /
    ``forgeflow.resume_mode``; when it continues, its steps go on from the checkpoint's and the earlier
    run's metrics up to that step are copied in, so its loss curve is one continuous line.
    """

    model_config = ConfigDict(extra="forbid")

    from_uri: str = Field(
        description="'latest' (the newest complete checkpoint under this spec's output_uri), a checkpoint "
        "<output_uri>/checkpoints/checkpoint-<step>, or another run's output_uri (or its checkpoints/ "
        "directory) for that run's newest complete checkpoint."
    )
    mode: ResumeMode = Field(
        default="continue",
        description="weights_only: a new training from the checkpoint's weights (a LoRA checkpoint: its "
        "adapter), fresh optimizer and schedule from step 0; continue: weights, optimizer, scheduler, RNG "
        "and data position, so the run goes on as if never interrupted; continue_skip: continue, then "
        "skip skip_samples training samples right after the checkpoint's data position (e.g. bad data).",
    )
    skip_samples: int = Field(
        default=0,
        ge=0,
        description="continue_skip: training samples to skip (packed blocks for pretrain, examples for "
        "SFT); the samples after them move up, so the run makes the same number of steps.",
    )
    if_missing: Literal["fail", "start"] = Field(
        default="fail",
        description="With from_uri 'latest' and no complete checkpoint yet: fail, or start from scratch "
        "(lets a retried task pick up where a killed attempt left off).",
    )

    @model_validator(mode="after")
    def _skip_needs_its_mode(self) -> ResumeSpec:
        if self.mode == "continue_skip" and self.skip_samples < 1:
            raise ValueError("resume.mode continue_skip needs resume.skip_samples >= 1")
        if self.mode != "continue_skip" and self.skip_samples:
            raise ValueError(
                f"resume.skip_samples={self.skip_samples} only applies to mode continue_skip (mode is {self.mode})"
            )
        if self.if_missing == "start" and self.from_uri != "latest":
            raise ValueError("resume.if_missing 'start' applies to from_uri 'latest' only")
        return self


DEEPSPEED_PRESETS = ("zero2", "zero3")


# A Kubernetes resource quantity (k8s.io/apimachinery resource.Quantity; the pattern CRDs use).
QUANTITY_RE = re.compile(
    r"^(?P<num>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?P<suffix>[KMGTPE]i|[numkMGTPE]|[eE][+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))?$"
)
_FACTORS = {
    "n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1.0,
    "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}  # fmt: skip


def parse_quantity(q: str, field: str = "quantity") -> float:
    """A Kubernetes quantity ('500m', '8Gi', '2', '1e3') as a number; a clear error for anything else."""
    m = QUANTITY_RE.match(str(q).strip())
    if not m:
        hint = " (Kubernetes spells gigabytes G or Gi, not GB)" if re.search(r"[KMGTPE]B$", str(q)) else ""
        raise ValueError(
            f"{field} {q!r} is not a Kubernetes quantity{hint}: use e.g. '4', '500m' (CPU), '16Gi' or '16G' (memory)"
        )
    number, suffix = float(m["num"]), m["suffix"] or ""
    if suffix[:1] in ("e", "E"):
        return number * 10 ** float(suffix[1:])
    return number * _FACTORS[suffix]


def _quantity(q: str) -> float:
    """A Kubernetes quantity as a number, for request <= limit checks ('500m', '8Gi', '2')."""
    return parse_quantity(q)


TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}
TOLERATION_EFFECTS = {"", "NoSchedule", "PreferNoSchedule", "NoExecute"}


class PodResources(BaseModel):
    """Resources of an engine pod (for a PyTorchJob: of each node's pod).

    Seed rule: requests may not exceed limits (recommended 4 / 8 CPUs). Quantities are Kubernetes
    quantities ('500m', '16Gi'); a GPU pod gets ``nvidia.com/gpu`` as request and limit, a memory-backed
    /dev/shm of ``shm_size`` (NCCL and data loaders need more than the container default of 64 MB).
    """

    model_config = ConfigDict(extra="forbid")

    cpu_request: str = Field(default="4", description="CPU request.")
    cpu_limit: str = Field(default="8", description="CPU limit.")
    memory_request: str = Field(default="16Gi", description="Memory request.")
    memory_limit: str = Field(default="32Gi", description="Memory limit.")
    gpus: int = Field(default=0, ge=0, le=16, description="NVIDIA GPUs (nvidia.com/gpu).")
    shm_size: str = Field(default="8Gi", description="Size of /dev/shm (NCCL and data loaders need it).")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the pod needs.")
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Kubernetes tolerations: {key, operator (Exists|Equal), value, effect, tolerationSeconds}.",
    )

    @model_validator(mode="after")
    def _requests_within_limits(self) -> PodResources:
        values = {
            name: parse_quantity(getattr(self, name), name)
            for name in ("cpu_request", "cpu_limit", "memory_request", "memory_limit", "shm_size")
        }
        for name, value in values.items():
            if value <= 0:
                raise ValueError(f"{name} {getattr(self, name)!r} must be positive")
        if values["cpu_request"] > values["cpu_limit"]:
            raise ValueError(f"cpu_request {self.cpu_request} exceeds cpu_limit {self.cpu_limit}")
        if values["memory_request"] > values["memory_limit"]:
            raise ValueError(f"memory_request {self.memory_request} exceeds memory_limit {self.memory_limit}")
        if values["shm_size"] > values["memory_limit"]:
            raise ValueError(
                f"shm_size {self.shm_size} exceeds memory_limit {self.memory_limit}: /dev/shm is memory "
                "the container is charged for"
            )
        for i, t in enumerate(self.tolerations):
            unknown = set(t) - TOLERATION_KEYS
            if unknown:
                raise ValueError(
                    f"tolerations[{i}]: unknown key(s) {sorted(unknown)}; allowed: {sorted(TOLERATION_KEYS)}"
                )
            op = t.get("operator", "Equal")
            if op not in ("Exists", "Equal"):
                raise ValueError(f"tolerations[{i}].operator {op!r}: use Exists or Equal")
            if op == "Exists" and t.get("value"):
                raise ValueError(f"tolerations[{i}]: operator Exists takes no value")
            if t.get("effect", "") not in TOLERATION_EFFECTS:
                raise ValueError(
                    f"tolerations[{i}].effect {t['effect']!r}: use NoSchedule, PreferNoSchedule or NoExecute"
                )
        return self

    def v1_tolerations(self) -> list[Any] | None:
        """The tolerations as kubernetes client objects (camelCase keys mapped to the client's names)."""
        from kubernetes.client import models as k8s

        out = []
        for t in self.tolerations:
            kw = {("toleration_seconds" if k == "tolerationSeconds" else k): v for k, v in t.items()}
            out.append(k8s.V1Toleration(**kw))
        return out or None


class DistributedConfig(BaseModel):
    """How many processes train, on how many nodes, and whether DeepSpeed ZeRO shards the state.

    ``processes`` is per node: one per GPU on a GPU node, or CPU processes (gloo) here. With 1 node and
    1 process the engine runs as one plain process; more processes on one node run under ``torchrun
    --standalone`` (the local runner or a single pod); more nodes need the Kubernetes runner, which
    submits a PyTorchJob (Master + Workers, each a ``torchrun``).
    """

    model_config = ConfigDict(extra="forbid")

    deepspeed: str = Field(
        default="none",
        description="none (plain DDP/single process), zero2 (optimizer state + gradients sharded), zero3 "
        "(parameters too; the saved model is gathered whole), or the path/lake URI of a DeepSpeed JSON "
        "config (relative paths are read from the project root, e.g. include/deepspeed/zero3_offload.json).",
    )
    processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Processes per node: GPUs per node on GPU, CPU processes (gloo) on CPU.",
    )
    nodes: int = Field(default=1, ge=1, le=256, description="Nodes (pods); more than 1 runs as a PyTorchJob.")
    min_nodes: int | None = Field(
        default=None,
        ge=1,
        description="Elastic training: the job may run with as few as this many nodes (torchrun "
        "--nnodes=min:max, PyTorchJob elasticPolicy); None: exactly 'nodes'.",
    )

    @field_validator("deepspeed")
    @classmethod
    def _deepspeed_value(cls, v: str) -> str:
        v = v.strip()
        if v in ("none", *DEEPSPEED_PRESETS) or v.endswith(".json"):
            return v
        raise ValueError(
            f"deepspeed {v!r} is neither a preset nor a JSON config: use none, {', '.join(DEEPSPEED_PRESETS)}, "
            "or a path/URI ending in .json"
        )

    @model_validator(mode="after")
    def _elastic_range(self) -> DistributedConfig:
        if self.min_nodes is not None and self.min_nodes > self.nodes:
            raise ValueError(
                f"min_nodes {self.min_nodes} exceeds nodes {self.nodes}; elastic runs use min_nodes..nodes"
            )
        return self

    @property
    def uses_deepspeed(self) -> bool:
        return self.deepspeed != "none"

    @property
    def world_size(self) -> int:
        """Processes of a fixed-size run (for elastic runs: at full size)."""
        return self.processes * self.nodes


class TrainSpec(Spec):
    """Train or fine-tune a model and register it in MLflow."""

    method: Method = Field(description="Training method.")
    base_model: str = Field(
        default="tiny",
        description="'tiny' (a Llama from config + a tokenizer trained on the data), a local/lake Hugging "
        "Face model directory, or a registered version 'models:/<name>/<version>'.",
    )
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)
    train_uri: str = Field(
        description="Lake directory of the training dataset version (Parquet under data/)."
    )
    eval_uri: str | None = Field(default=None, description="Optional evaluation dataset version.")
    validation_split: float = Field(default=0.05, ge=0, lt=1, description="Held-out share when no eval set.")
    max_records: int | None = Field(
        default=None, ge=1, description="Train on the first N records only (debug runs); None: all of them."
    )
    dataset_ref: str | None = Field(
        default=None, description="Catalogue reference SCENE/NAME@Vn, for lineage."
    )
    chat_template: str | None = Field(
        default=None,
        description="Chat template of the model: empty keeps the base tokenizer's own (ChatML when it has none, "
        "and for 'tiny'); a bundled name (chatml, qwen2, llama3: include/chat_templates/) or a .jinja path. "
        "Saved with the model, so serving renders prompts as in training.",
    )
    hyperparams: HyperParams = Field(default_factory=HyperParams)
    output_uri: str = Field(description="Lake directory for the final model (and checkpoints).")
    experiment: str = Field(default="forgeflow-train", description="MLflow experiment name.")
    register_as: str | None = Field(
        default=None, description="Registered model name; None skips registration."
    )
    merge_lora: bool = Field(
        default=True, description="Merge a LoRA adapter into its base before registering."
    )
    teacher: Endpoint | None = Field(
        default=None,
        description="Distillation: the teacher model behind an OpenAI-compatible endpoint; it answers every "
        "question of the training data and the student learns its answers.",
    )
    distill: DistillConfig = Field(default_factory=DistillConfig)
    resume: ResumeSpec | None = Field(
        default=None, description="Start from a checkpoint (see ResumeSpec); None trains from the base."
    )
    distributed: DistributedConfig = Field(
        default_factory=DistributedConfig,
        description="Processes, nodes and DeepSpeed ZeRO (default: one process, no DeepSpeed).",
    )
    resources: PodResources = Field(
        default_factory=PodResources,
        description="What each node's pod asks of Kubernetes: GPUs (one process per GPU), CPU, memory, "
        "/dev/shm, node selector, tolerations. The local runner ignores it.",
    )
    retrain_of: str | None = Field(
        default=None,
        description="MLflow run id of the run this one retrains (lineage, tagged on the new run); set by "
        "model_train's retrain_of Param.",
    )

    @field_validator("register_as")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return None if v is None else check_name(v, "register_as")

    def redacted(self) -> dict[str, Any]:
        """The spec as JSON data for logs, MLflow and the model directory (it holds no secret: an endpoint
        names where its key is, never the key)."""
        return self.model_dump(mode="json")

    @model_validator(mode="after")
    def _one_process_per_gpu(self) -> TrainSpec:
        gpus, processes = self.resources.gpus, self.distributed.processes
        if gpus and processes != gpus:
            raise ValueError(
                f"resources.gpus={gpus} but distributed.processes={processes}: a GPU run has one process per "
                f"GPU; set distributed.processes to {gpus} (the dist_processes Param)"
            )
        return self

    @model_validator(mode="after")
    def _teacher_for_distill(self) -> TrainSpec:
        if self.method == "distill" and self.teacher is None:
            raise ValueError(
                "method distill needs a teacher: set teacher.base_url (an OpenAI-compatible /v1 URL) and "
                "teacher.model (the model name it serves)"
            )
        return self

    @model_validator(mode="after")
    def _adapter_needs_a_base(self) -> TrainSpec:
        lora = self.method == "sft_lora" or (self.method == "distill" and self.distill.student == "lora")
        if lora and not self.merge_lora and self.base_model == "tiny":
            raise ValueError(
                "merge_lora=false keeps only the adapter, which needs a registered or stored base model; "
                "base_model 'tiny' is built in the run and not kept. Merge, or train the base first."
            )
        return self


# ---------------------------------------------------------------- evaluation engine


class GenerationParams(BaseModel):
    """Inference defaults from the seeds: temperature 0.3, top_p 1, presence_penalty 0."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(default=0.3, ge=0, le=2, description="Sampling temperature.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling mass.")
    presence_penalty: float = Field(default=0.0, ge=-2, le=2, description="Presence penalty.")
    max_tokens: int = Field(default=128, ge=1, le=32768, description="Most tokens generated per answer.")
    seed: int | None = Field(default=0, description="Sampling seed where the server supports it.")


ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class KeyMissing(RuntimeError):
    """An endpoint names a key variable that the engine's environment does not hold."""


class Endpoint(BaseModel):
    """An OpenAI-compatible server. Its bearer key is never part of a spec (specs go to the lake, MLflow
    and logs): the spec names the environment variable the engine reads it from (``api_key_env``) and,
    for runs from Airflow, the Connection whose password the runner puts there (``api_key_conn_id``)."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(description="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1.")
    model: str = Field(description="Model name the server knows.")
    api_key_env: str | None = Field(
        default=None,
        pattern=ENV_NAME,
        description="Environment variable holding the bearer key, if the server wants one (read by the "
        "engine at run time; on Kubernetes put it in the forgeflow-env secret).",
    )
    api_key_conn_id: str | None = Field(
        default=None,
        description="Airflow Connection whose password is the bearer key: the runner resolves it and hands "
        "it to the engine in api_key_env (default FORGEFLOW_KEY_<CONN_ID>).",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_key_in_specs(cls, data: Any) -> Any:
        if isinstance(data, dict) and "api_key" in data:
            if data.get("api_key") not in (None, "", "***"):
                raise ValueError(
                    "api_key: a key is never written into a spec; put it in an environment variable and name "
                    "that in api_key_env (or, from Airflow, an Airflow Connection in api_key_conn_id)"
                )
            data = {k: v for k, v in data.items() if k != "api_key"}  # null / masked: earlier specs
        return data

    @model_validator(mode="after")
    def _env_for_conn(self) -> Endpoint:
        if self.api_key_conn_id and not self.api_key_env:
            self.api_key_env = "FORGEFLOW_KEY_" + re.sub(r"[^A-Za-z0-9]", "_", self.api_key_conn_id).upper()
        return self

    def bearer_key(self) -> str | None:
        """The key from the engine's environment (None when the endpoint needs none)."""
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise KeyMissing(
                f"endpoint {self.base_url}: the environment variable {self.api_key_env} holding its key is not "
                "set" + (f" (Airflow Connection {self.api_key_conn_id!r})" if self.api_key_conn_id else "")
            )
        return key


class EvalSpec(Spec):
    """Generate answers for a test set through an OpenAI-compatible endpoint and score them."""

    endpoint: Endpoint
    dataset_uri: str = Field(description="Test data: a dataset version directory, Parquet or JSONL file.")
    dataset_ref: str | None = Field(
        default=None, description="Catalogue reference SCENE/NAME@Vn, for lineage."
    )
    max_samples: int | None = Field(default=100, ge=1, description="Evaluate at most N records (None: all).")
    concurrency: int = Field(default=4, ge=1, le=64, description="Requests in flight.")
    generation: GenerationParams = Field(default_factory=GenerationParams)
    metrics: list[Literal["rouge_l", "bleu_4"]] = Field(default_factory=lambda: ["rouge_l", "bleu_4"])
    experiment: str = Field(default="forgeflow-evaluate", description="MLflow experiment name.")
    model_ref: str | None = Field(
        default=None, description="Registered model under test, models:/name/version."
    )
    output_uri: str = Field(description="Lake directory for predictions.jsonl and metrics.json.")


# ---------------------------------------------------------------- serving engine


class ServeSpec(Spec):
    """Start (or replace) a model service with an OpenAI-compatible API."""

    service_name: Annotated[str, Field(description="Service name (seed naming rule).")]
    model: str = Field(description="models:/<name>/<version>, or a model directory.")
    backend: Literal["auto", "vllm", "fallback"] = Field(
        default="auto", description="auto tries vLLM and falls back when it cannot start."
    )
    port: int = Field(default=0, ge=0, le=65535, description="Port; 0 picks a free one.")
    served_model_name: str | None = Field(
        default=None, description="Model name in the API (default: service)."
    )
    max_model_len: int = Field(default=512, ge=16, description="Longest context the server accepts.")
    startup_timeout_s: int = Field(default=600, ge=10, description="Give up when not healthy by then.")
    ttl_minutes: int | None = Field(default=None, ge=1, description="Stop the service after this long.")
    extra_args: list[str] = Field(default_factory=list, description="Extra vLLM arguments.")

    @field_validator("service_name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "service_name")


SPEC_TYPES: dict[str, type[Spec]] = {
    "spark_ops.run": ProcessSpec,
    "trainers.train": TrainSpec,
    "trainers.evaluate": EvalSpec,
    "serving.deploy": ServeSpec,
}


# ---------------------------------------------------------------- mixing and publishing engines

Sampling = Literal["down", "up", "both"]
ExportFormat = Literal["standard", "openai", "sharegpt"]


class MixInput(BaseModel):
    """A dataset version the mix reads: its lake directory and its catalogue reference."""

    model_config = ConfigDict(extra="forbid")

    uri: str = Field(description="Lake directory of the version (data/*.parquet and manifest.json).")
    ref: str = Field(description="Catalogue reference SCENE/NAME@Vn; tagged on each record as mix:<ref>.")


class MixPart(BaseModel):
    """One share of the mix: a whole version (by dataset) or the records carrying some tags (by tag)."""

    model_config = ConfigDict(extra="forbid")

    uri: str | None = Field(default=None, description="By dataset: lake directory of the version.")
    ref: str | None = Field(default=None, description="By dataset: catalogue reference SCENE/NAME@Vn.")
    tags: list[str] | None = Field(
        default=None,
        description="By tag: the part takes the records (from the union of the spec's inputs) that carry "
        "all these tags; [] matches every record. A record belongs to the first part it matches.",
    )
    name: str | None = Field(default=None, description="Label in the report (default: the ref or the tags).")
    role: str | None = Field(default=None, description="With a preset: the preset role this part fills.")
    count: int | None = Field(default=None, ge=1, description="Exact number of records to take.")
    ratio: float | None = Field(
        default=None,
        gt=0,
        description="Relative weight (1, 6 for 1:6); with a preset it overrides the role's.",
    )

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.ref:
            return self.ref
        return "+".join(self.tags or []) or "(any)"


class MixSpec(Spec):
    """Mix two or more dataset versions by dataset or by tag, by counts or ratios, seeded (spark_ops.mix).

    Targets: with ``count`` every part takes exactly that many records. With ratios the per-part targets
    are integers whose proportions match the ratios as exactly as integers allow: for a given ``total`` by
    the largest-remainder method; without one, the part named by ``baseline`` keeps all its records and
    the others scale to it; without either, ``sampling`` decides (down: the largest mix that needs no
    repetition, up: the smallest that keeps every record). Where the reduced integer weights fit, the
    total is a multiple of their sum, so the proportions are exact.

    ``sampling``: ``down`` never repeats a record (a target above what a part holds is an error);
    ``up`` never drops one (a target below it is an error); ``both`` does either per part. Down-sampling
    takes the records with the smallest hash of (seed, ref, id, copy); up-sampling takes every record
    ``target // available`` times, then a seeded sample of ``target % available`` for the last copy.
    Records are repeated as they are: text is never changed.
    """

    by: Literal["dataset", "tag"] = Field(
        default="dataset", description="dataset: each part is a version; tag: parts select by meta.tags."
    )
    inputs: list[MixInput] = Field(
        default_factory=list, description="By tag: the versions whose records the tag parts select from."
    )
    parts: list[MixPart] = Field(min_length=2, description="The shares of the mix (at least two).")
    preset: str | None = Field(
        default=None,
        description="A preset of include/mix_presets.yaml (pretrain-industry-general, sft-industry-general, "
        "distill): its roles, ratios, baseline and sampling; parts name their role.",
    )
    usage: Usage | None = Field(
        default=None, description="Expected usage of every input (checked against their manifests)."
    )
    total: int | None = Field(default=None, ge=1, description="Target size of the mix (ratios only).")
    baseline: str | None = Field(
        default=None,
        description="Without total: the part (name, ref or role) kept whole; the others scale to it.",
    )
    seed: int = Field(
        default=0, description="Seed of the sampling hash; the same spec gives the same records."
    )
    sampling: Sampling | None = Field(
        default=None, description="down, up or both (default: the preset's, else down)."
    )
    spark: SparkResources = Field(default_factory=SparkResources, description="Spark resources of the run.")
    output_uri: str = Field(description="Lake directory the mixed version is written to.")

    @model_validator(mode="after")
    def _parts_shape(self) -> MixSpec:
        for i, p in enumerate(self.parts):
            where = f"parts[{i}] ({p.label})"
            if self.by == "dataset":
                if not (p.uri and p.ref) or p.tags is not None:
                    raise ValueError(
                        f"{where}: mixing by dataset needs uri and ref on every part, and no tags"
                    )
            elif p.tags is None or p.uri or p.ref:
                raise ValueError(f"{where}: mixing by tag needs tags on every part (and no uri/ref)")
            if p.count is not None and p.ratio is not None:
                raise ValueError(f"{where}: give count or ratio, not both")
            if p.count is None and p.ratio is None and self.preset is None:
                raise ValueError(f"{where}: give a count or a ratio (or use a preset)")
            if self.preset is not None and not p.role:
                raise ValueError(f"{where}: with preset {self.preset!r} every part names its role")
        if self.by == "tag" and not self.inputs:
            raise ValueError("mixing by tag needs inputs: the versions the tag parts select from")
        if self.by == "dataset" and self.inputs:
            raise ValueError("mixing by dataset takes its versions from the parts; leave inputs empty")
        counted = {p.count is not None for p in self.parts}
        if len(counted) > 1:
            raise ValueError("give every part a count, or none (ratios); a mix of both has no single meaning")
        if True in counted and (self.total is not None or self.baseline is not None):
            raise ValueError("total and baseline apply to ratios; with counts each part's count is its size")
        if self.total is not None and self.baseline is not None:
            raise ValueError("give total or baseline, not both")
        labels = [p.label for p in self.parts]
        if len(set(labels)) != len(labels):
            raise ValueError(f"part labels must be distinct, got {labels}; set name on the parts")
        if self.preset is not None:
            from tasks.mixing import resolve_preset  # yaml is read only when a preset is used

            resolve_preset(self)
        return self


class PublishSpec(Spec):
    """Publish a dataset version as an export: format, train/validation split, atomic (spark_ops.publish)."""

    version_uri: str = Field(description="Lake directory of the version to publish.")
    ref: str | None = Field(default=None, description="Catalogue reference SCENE/NAME@Vn, for lineage.")
    format: ExportFormat = Field(
        default="standard",
        description="standard: canonical JSONL records; openai: {messages: [{role, content}]}; sharegpt: "
        "{system?, conversations: [{from, value}]}. reward_model data exports as standard only.",
    )
    visibility: Literal["private", "public"] = Field(default="private", description="Who may select it.")
    validation_ratio: float | None = Field(
        default=None, ge=0, lt=1, description="Share of records held out for validation (rounded half up)."
    )
    validation_count: int | None = Field(default=None, ge=0, description="Exact number held out instead.")
    seed: int = Field(default=0, description="Seed of the split hash of the record id.")
    spark: SparkResources = Field(default_factory=SparkResources, description="Spark resources of the run.")
    output_uri: str = Field(description="Lake directory of the export; it appears complete or not at all.")

    @model_validator(mode="after")
    def _one_split_size(self) -> PublishSpec:
        if self.validation_ratio is not None and self.validation_count is not None:
            raise ValueError("give validation_ratio or validation_count, not both")
        return self


SPEC_TYPES["spark_ops.mix"] = MixSpec
SPEC_TYPES["spark_ops.publish"] = PublishSpec

# ---------------------------------------------------------------- quality engine


class QualitySpec(Spec):
    """Quality report (statistics + charts) and the Great Expectations suite of one dataset version."""

    version_uri: str = Field(
        description="Lake directory of the dataset version (data/*.parquet, manifest.json)."
    )
    usage: Usage = Field(
        description="The version's usage; picks the canonical columns and the default suite."
    )
    out_uri: str = Field(description="Lake directory the engine writes report.json and report.html into.")
    tokenizer: str | None = Field(
        default=None,
        description="A Hugging Face tokenizer directory or tokenizer.json file (path or lake URI) to count "
        "tokens with; None: the approximation CJK characters + other words.",
    )
    suite_uri: str | None = Field(
        default=None,
        description="A Great Expectations suite JSON (path or lake URI); None: include/expectations/<usage>.json.",
    )
    suite_parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides of the suite's parameters (meta.forgeflow.parameters), e.g. {'target_max_chars': 8192}.",
    )
    examples: int = Field(default=5, ge=0, le=100, description="Example record ids kept per finding.")
    spark: SparkResources = Field(default_factory=SparkResources)


SPEC_TYPES["spark_ops.quality"] = QualitySpec
