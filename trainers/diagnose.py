"""Fault diagnosis for training runs: known failures in the logs, and typical problems in the loss curve.

    python -m trainers.diagnose LOGFILE [--exit-code N]     # e.g. a pod log saved from the Airflow UI

Two halves, both plain Python (no torch), so the orchestrator can run them on a failed engine's output:

- **Log diagnosis** (``LogScanner``, ``diagnose_log``): each line of the engine's output is matched
  against ``LOG_RULES``, a table of failures whose message texts come from the libraries that print
  them (PyTorch's CUDA and CPU allocators, ProcessGroupNCCL's watchdog, gloo, transformers' Trainer and
  tokenizers, safetensors, DeepSpeed's loss scaler) and from this project's own errors (``DataError``,
  ``CatalogError``, spec validation). A finding names the line number, the line, what it means and the
  remedy the seeds give. The exit code adds what the lines cannot say (SIGKILL: the OOM killer).
- **Curve diagnosis** (``diagnose_history``): the per-log-step loss / grad norm / learning rate series
  is checked for NaN/inf, loss spikes (with or without a grad-norm jump: a bad batch), loss going to
  zero (memorising), loss rising (learning rate too high), early swings (too little warmup) and a noisy
  loss (batch too small). The thresholds are the fields of ``Thresholds``; each says why it is what it
  is, and the unit tests hold them to synthetic curves, a normal decaying one included.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Severity = Literal["error", "warning", "info"]
SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}
MAX_LINE_CHARS = 500


class TrainingDiverged(RuntimeError):
    """Training stopped because the logged loss or grad norm stayed NaN/inf; the message says what to do."""


@dataclass(frozen=True)
class Finding:
    """One diagnosed problem: what it is, where it shows (log line or training step) and what to do."""

    kind: str
    severity: Severity
    title: str
    remedy: str
    line_no: int | None = None
    line: str | None = None
    step: int | None = None
    count: int = 1
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and v != {}}

    def render(self) -> str:
        """One or two lines for a task log: kind, where, title, then the remedy."""
        where = ""
        if self.line_no is not None:
            where = f" line {self.line_no}" + (f" (and {self.count - 1} more)" if self.count > 1 else "")
        elif self.step is not None:
            where = f" step {self.step}"
        head = f"[{self.severity}] {self.kind}{where}: {self.title}"
        if self.line is not None:
            head += f"\n    > {self.line}"
        return f"{head}\n    remedy: {self.remedy}"


def format_findings(findings: Sequence[Finding]) -> str:
    return "\n".join(f.render() for f in findings)


def summary_tag(findings: Sequence[Finding]) -> str:
    """A short tag value: 'clean', or the kinds found, worst first (e.g. 'error: nan_loss; warning: ...')."""
    if not findings:
        return "clean"
    by_severity: dict[str, list[str]] = {}
    for f in sorted(findings, key=lambda f: SEVERITY_ORDER[f.severity]):
        kinds = by_severity.setdefault(f.severity, [])
        if f.kind not in kinds:
            kinds.append(f.kind)
    return "; ".join(f"{sev}: {', '.join(kinds)}" for sev, kinds in by_severity.items())[:250]


# ---------------------------------------------------------------- log diagnosis

OOM_REMEDY = (
    "lower hyperparams.batch_size and raise gradient_accumulation_steps to keep the effective batch, lower "
    "max_seq_length, train a LoRA adapter (sft_lora) instead of every weight, or shard with DeepSpeed "
    "ZeRO-3 / CPU offload; if reserved memory is much larger than allocated, set "
    "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"
)
NAN_REMEDY = (
    "lower hyperparams.learning_rate (e.g. halve it), raise warmup_ratio, keep gradient clipping on, train "
    "in bf16 rather than fp16, and check the data around that step for empty, garbled or extremely long "
    "records; resume from a checkpoint saved before the divergence"
)


@dataclass(frozen=True)
class LogRule:
    """A known failure: regexes that recognise its message, and what to tell the user."""

    kind: str
    severity: Severity
    title: str
    remedy: str
    patterns: tuple[str, ...]

    def compiled(self) -> re.Pattern[str]:
        return re.compile("|".join(f"(?:{p})" for p in self.patterns))


LOG_RULES: tuple[LogRule, ...] = (
    LogRule(
        "cuda_oom",
        "error",
        "the GPU ran out of memory",
        OOM_REMEDY,
        (
            # torch c10/cuda/CUDACachingAllocator.cpp: "CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0
            # has a total capacity of ..."; raised as torch.OutOfMemoryError (torch.cuda.OutOfMemoryError).
            r"CUDA out of memory",
            r"\bOutOfMemoryError\b",
            r"CUBLAS_STATUS_ALLOC_FAILED",
            r"HIP out of memory",
        ),
    ),
    LogRule(
        "cpu_oom",
        "error",
        "the host ran out of memory",
        "lower hyperparams.batch_size or max_seq_length, use fewer data-loader workers, or raise the "
        "pod's memory_limit (PodResources); ZeRO offload moves optimizer state to host memory and needs "
        "more of it",
        (
            # c10/core/impl/alloc_cpu.cpp: "DefaultCPUAllocator: can't allocate memory: you tried to allocate
            # N bytes. Error code 12 (Cannot allocate memory)" (older builds: "not enough memory").
            r"DefaultCPUAllocator: (?:can't allocate memory|not enough memory)",
            r"(?:^|\]: )\s*MemoryError\b",  # a Python traceback's last line (torchrun prefixes '[rankN]: ')
            r"\bOOMKilled\b",  # Kubernetes container status
            r"Out of memory: Killed process",  # kernel OOM killer (dmesg)
            r"Memory cgroup out of memory",
        ),
    ),
    LogRule(
        "rank_killed",
        "error",
        "a training process was killed (SIGKILL), most often by the kernel's OOM killer",
        "the host ran out of memory: lower hyperparams.batch_size or max_seq_length, use fewer processes "
        "per node, or raise the node's or pod's memory limit (PodResources.memory_limit)",
        (
            # torch/distributed/elastic/multiprocessing/errors: torchrun's failure summary of a rank
            r"Signal 9 \(SIGKILL\) received by PID",
            r"exitcode\s*:\s*-9 \(pid:",
        ),
    ),
    LogRule(
        "nan_loss",
        "error",
        "the loss became NaN or infinite (training diverged)",
        NAN_REMEDY,
        (
            r"\bTrainingDiverged\b",  # this engine's stop (trainers.tracking.TrainingWatch)
            r"'loss': '?(?:nan|inf|-inf)'?[,}]",  # the Trainer's printed log dict
            r"returned nan values in its \d+(?:st|nd|rd|th) output",  # torch autograd anomaly mode
            # deepspeed/runtime/fp16/loss_scaler.py: the fp16 loss scale cannot shrink further
            r"Current loss scale already at minimum - cannot decrease scale anymore",
        ),
    ),
    LogRule(
        "fp16_overflow",
        "warning",
        "fp16 gradients overflowed and steps were skipped",
        "occasional skips are normal while the loss scale settles; many in a row mean the loss is "
        "diverging: lower the learning rate or train in bf16",
        # deepspeed/runtime/fp16/loss_scaler.py
        (r"\[deepspeed\] OVERFLOW! (?:Rank \d+ )?Skipping step",),
    ),
    LogRule(
        "collective_timeout",
        "error",
        "a distributed collective (NCCL/gloo) or the rendezvous timed out",
        "one rank is stuck or dead: read the first failing rank's log (often an OOM or data error there), "
        "make sure every rank sees the same number of batches, check the network between nodes "
        "(NCCL_SOCKET_IFNAME, InfiniBand) with NCCL_DEBUG=INFO, and raise the timeout (ddp_timeout) only "
        "for a known slow step such as saving a large checkpoint",
        (
            # torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp
            r"Watchdog caught collective operation timeout",
            r"Timeout at NCCL work",
            # gloo/transport/tcp/unbound_buffer.cc: "Timed out waiting 1800000ms for recv operation to complete"
            r"Timed out waiting \d+ms for (?:send|recv) operation to complete",
            r"\bDistStoreError\b",
            r"Timed out after \d+ seconds waiting for clients",  # TCPStore rendezvous
            r"torch\.distributed\.elastic\.rendezvous\.api\.RendezvousTimeoutError",
        ),
    ),
    LogRule(
        "nccl_error",
        "error",
        "NCCL failed",
        "check that the driver, CUDA and NCCL versions match, that /dev/shm is large enough (PodResources."
        "shm_size) and rerun with NCCL_DEBUG=INFO to see which peer or transport failed",
        (
            r"\bNCCL error\b",
            r"\bnccl(?:UnhandledCudaError|SystemError|InternalError|InvalidUsage|RemoteError)\b",
            r"\bDistBackendError\b",
        ),
    ),
    LogRule(
        "checkpoint_missing",
        "error",
        "the checkpoint to resume from or the model to load is not there",
        "check the path (the run's output_uri/checkpoints, or a registered models:/NAME/VERSION); a run "
        "with save_strategy 'no' saves no checkpoints to resume from",
        (
            r"No valid checkpoint found in output directory",  # transformers Trainer
            r"Can't find a valid checkpoint at",  # transformers Trainer
            r"does not appear to have a file named",  # transformers from_pretrained
            r"model directory \S+ does not exist",  # tasks.registry.fetch_model
            r"registered model '[^']+' has no versions",  # tasks.registry.resolve_version
        ),
    ),
    LogRule(
        "checkpoint_corrupt",
        "error",
        "a checkpoint or weight file is unreadable (truncated or corrupt)",
        "the file was probably cut short while saving (disk full or the process killed): resume from the "
        "previous checkpoint (keep save_total_limit >= 2) or fetch the model again",
        (
            r"PytorchStreamReader failed reading zip archive",  # torch.load
            r"Error while deserializing header",  # safetensors
            r"is not a valid JSON file",  # transformers config
            r"Unable to load weights from pytorch checkpoint file",
        ),
    ),
    LogRule(
        "tokenizer_mismatch",
        "error",
        "the tokenizer, its chat template or its vocabulary does not fit the model or the data",
        "use the tokenizer saved with the base model; give it a chat template whose generation prompt is "
        "a prefix of the rendered conversation (ChatML, Llama 3, Qwen) and an eos token; token ids beyond "
        "the model's vocabulary mean tokenizer and model do not belong together (or resize the embeddings)",
        (
            # trainers.data.encode_chat / trainers.methods (DataError)
            r"chat template renders the conversation without its generation prompt as a prefix",
            r"its tokenizer has no eos token",
            # transformers tokenization_utils_base.py
            r"Cannot use chat template functions because tokenizer\.chat_template is not set",
            r"Unable to load vocabulary from file",
            r"IndexError: index out of range in self",  # embedding lookup of an id >= vocab size
            r"device-side assert triggered",  # the CUDA form of the same (or labels out of range)
        ),
    ),
    LogRule(
        "dataset_unusable",
        "error",
        "the dataset version does not fit the training method",
        "pick a published version whose usage fits the method (sft data for sft_*, pretrain data for "
        "pretrain) and whose records have the canonical columns; the quoted line names the file or record",
        (
            r"can only use \S+(?: or \S+)* data",  # tasks.catalog (usage)
            r"is not published; publish it before using it",
            r"expected columns context and target",  # trainers.data.chat_records
            r"pretrain data needs a 'text' column",
            r"context must hold alternating turns",
            r"every prompt is longer than max_seq_length",
            r"is less than one block of max_seq_length",
            r"no Parquet files under",
            r"DataError: .*: no records",
        ),
    ),
    LogRule(
        "disk_full",
        "error",
        "the disk is full",
        "free space under FORGEFLOW_HOME and the lake, keep fewer checkpoints (save_total_limit) or save "
        "less often; the health check's min_free_gb stops a run that starts short of space",
        (r"No space left on device", r"\[Errno 28\]", r"Disk quota exceeded"),
    ),
    LogRule(
        "gpu_unavailable",
        "error",
        "no usable GPU",
        "run the health check with the GPUs the run needs; check the node's driver (nvidia-smi), the "
        "pod's nvidia.com/gpu limit and CUDA_VISIBLE_DEVICES",
        (
            r"Found no NVIDIA driver on your system",
            r"CUDA driver version is insufficient",
            r"No CUDA GPUs are available",
            r"CUDA error: invalid device ordinal",
            r"Torch not compiled with CUDA enabled",
        ),
    ),
    LogRule(
        "spec_invalid",
        "error",
        "the spec (DAG Params) does not validate",
        "fix the fields the quoted lines name (their descriptions are in the DAG's Params form)",
        (r": \d+ invalid field\(s\)", r"is not available in this engine; available methods"),
    ),
    LogRule(
        "hub_offline",
        "error",
        "a model was asked for from the Hugging Face Hub, which this platform does not reach",
        "set base_model to a local or lake model directory or a registered version models:/NAME/VERSION",
        (
            r"We couldn't connect to 'https://huggingface\.co'",
            r"\bOfflineModeIsEnabled\b",
            r"Repo id must be in the form 'repo_name' or 'namespace/repo_name'",
        ),
    ),
)

EXIT_SIGNALS: dict[int, tuple[str, Severity, str, str]] = {
    9: (
        "killed",
        "error",
        "the engine was killed (SIGKILL), most often by the kernel's OOM killer or a container memory limit",
        "lower hyperparams.batch_size or max_seq_length, or raise the memory limit of the node or pod "
        "(PodResources.memory_limit); on Kubernetes the pod's status says OOMKilled",
    ),
    15: (
        "terminated",
        "info",
        "the engine was stopped (SIGTERM): the task was cancelled or hit its execution_timeout",
        "if it timed out, raise the task's execution_timeout or train fewer steps",
    ),
}


@dataclass
class _Hit:
    line_no: int
    line: str
    count: int = 1


class LogScanner:
    """Feeds on log lines one at a time and keeps, per known failure, the first line that shows it.

    Memory stays constant however long the log is, so the runner can scan a 24-hour run as it streams.
    """

    def __init__(self, rules: Sequence[LogRule] = LOG_RULES):
        self.rules = list(rules)
        self._compiled = [r.compiled() for r in self.rules]
        self._hits: dict[str, _Hit] = {}
        self.lines = 0

    def feed(self, line: str) -> None:
        self.lines += 1
        for rule, rx in zip(self.rules, self._compiled, strict=True):
            if rx.search(line):
                hit = self._hits.get(rule.kind)
                if hit is None:
                    self._hits[rule.kind] = _Hit(self.lines, line.strip()[:MAX_LINE_CHARS])
                else:
                    hit.count += 1

    def findings(self, exit_code: int | None = None) -> list[Finding]:
        """Findings in order: errors first, then by the line they first appear on."""
        out = [
            Finding(r.kind, r.severity, r.title, r.remedy, line_no=h.line_no, line=h.line, count=h.count)
            for r in self.rules
            if (h := self._hits.get(r.kind)) is not None
        ]
        signal = _signal_of(exit_code)
        if signal in EXIT_SIGNALS:
            kind, severity, title, remedy = EXIT_SIGNALS[signal]
            out.append(Finding(kind, severity, f"{title} (exit code {exit_code})", remedy))
        return sorted(out, key=lambda f: (SEVERITY_ORDER[f.severity], f.line_no or 0))


def _signal_of(exit_code: int | None) -> int | None:
    """The signal that ended a process: Popen reports -N, shells and Kubernetes 128 + N."""
    if exit_code is None:
        return None
    if exit_code < 0:
        return -exit_code
    if 128 < exit_code < 160:
        return exit_code - 128
    return None


def diagnose_log(lines: Iterable[str], exit_code: int | None = None) -> list[Finding]:
    scanner = LogScanner()
    for line in lines:
        scanner.feed(line)
    return scanner.findings(exit_code)


# ---------------------------------------------------------------- curve diagnosis


@dataclass(frozen=True)
class MetricPoint:
    """One Trainer log step: the mean loss since the previous log, and the grad norm and LR at that step."""

    step: int
    loss: float
    grad_norm: float | None = None
    learning_rate: float | None = None

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss) and (self.grad_norm is None or math.isfinite(self.grad_norm))


@dataclass(frozen=True)
class Thresholds:
    """When a curve counts as a problem. Losses are compared relatively, so they hold for any scale."""

    min_points: int = 6
    """Fewer logged points than this say nothing about a curve's shape (NaN/inf is still reported)."""
    spike_window: int = 10
    """A spike is measured against the median of up to this many preceding points (at least 4)."""
    spike_ratio: float = 1.5
    """A point 50% above that median is a spike: a decaying curve never rises so far in one log step."""
    spike_mads: float = 6.0
    """...and also more than 6 robust standard deviations (1.4826 x MAD) above it, so noise is not one."""
    grad_jump_ratio: float = 3.0
    """A grad norm 3x the median of the preceding ones at (or one log before) a spike is a jump."""
    max_spikes: int = 3
    """At most this many spikes are reported, largest first; the rest are counted."""
    zero_loss: float = 0.05
    """A training loss below 0.05 nats/token at the end means the model recites its training data."""
    eval_gap_ratio: float = 2.0
    """An eval loss 2x the final training loss (with training loss < 1) is overfitting too."""
    rise_ratio: float = 0.2
    """Loss rising: the median of the last third is 20% above the lowest block median before it."""
    early_fraction: float = 0.25
    """The early phase is the first quarter of the logged points (at least 4)."""
    swing_ratio: float = 0.15
    """An early swing is a rise of 15% over the previous point."""
    min_swings: int = 3
    """At least three early swings, at a rate twice the rest of the run's, and with the LR at 90% of its peak."""
    noise_ratio: float = 0.1
    """Noisy: the loss varies by more than 10% (robust relative std around its trend; a clean curve: ~2%)."""
    min_noise_points: int = 8
    """Noise is judged on at least 8 points after the early phase."""


THRESHOLDS = Thresholds()


def diagnose_history(
    points: Sequence[MetricPoint], eval_loss: float | None = None, t: Thresholds = THRESHOLDS
) -> list[Finding]:
    """Typical problems of a training curve, each pointing at the step where it shows."""
    findings: list[Finding] = []
    bad = next((p for p in points if not p.finite), None)
    if bad is not None:
        findings.append(
            Finding(
                "nan_loss",
                "error",
                f"the loss (or grad norm) became non-finite at step {bad.step}: loss {bad.loss}, "
                f"grad norm {bad.grad_norm}",
                NAN_REMEDY,
                step=bad.step,
            )
        )
    clean = [p for p in points if p.finite]  # a blip the run recovered from leaves the rest of the curve
    if len(clean) < t.min_points:
        return findings
    early_end = max(4, math.ceil(t.early_fraction * len(clean)))
    noisy = _noisy(clean, early_end, t)
    spikes = _spikes(clean, t)
    if noisy:  # on a noisy curve only a spike that the grad norm confirms stands out
        spikes = [f for f in spikes if f.detail["grad_norm_jump"]]
    findings += spikes
    findings += _overfit([p.loss for p in clean], eval_loss, clean[-1].step, t)
    findings += _rising(clean, t)
    findings += _early_swings(clean, early_end, t)
    findings += noisy
    return findings


def _median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def _spikes(points: Sequence[MetricPoint], t: Thresholds) -> list[Finding]:
    spikes: list[tuple[float, int, bool]] = []  # (ratio, index, grad jump)
    i = 4
    while i < len(points):
        window = [p.loss for p in points[max(0, i - t.spike_window) : i]]
        base = _median(window)
        mad = _median([abs(x - base) for x in window]) * 1.4826
        loss = points[i].loss
        if base > 0 and loss > base * t.spike_ratio and loss - base > t.spike_mads * mad:
            spikes.append((loss / base, i, _grad_jump(points, i, t)))
            while i + 1 < len(points) and points[i + 1].loss > base * t.spike_ratio:
                i += 1  # one spike, however many log steps it lasts
        i += 1
    spikes.sort(reverse=True)
    out = []
    for ratio, i, jump in spikes[: t.max_spikes]:
        p = points[i]
        title = f"loss spike at step {p.step}: {p.loss:.4g}, {ratio:.1f}x the preceding median"
        if jump:
            title += f", with a grad-norm jump to {_grad_at_jump(points, i):.4g}"
            remedy = (
                f"a jump of loss and grad norm together is typical of a bad batch: inspect the records "
                f"trained around step {p.step} (corrupt, duplicated, extremely long or wrongly labelled text) "
                "and clean the dataset; keep gradient clipping on and lower the learning rate if it recurs"
            )
        else:
            remedy = (
                "an isolated spike without a grad-norm jump usually recovers; if the loss does not come back "
                "down, lower the learning rate and inspect the data around that step"
            )
        detail = {"ratio": round(ratio, 3), "grad_norm_jump": jump}
        if len(spikes) > t.max_spikes:
            detail["spikes_total"] = len(spikes)
        out.append(Finding("loss_spike", "warning", title, remedy, step=p.step, detail=detail))
    return out


def _grad_at_jump(points: Sequence[MetricPoint], i: int) -> float:
    return max(p.grad_norm or 0.0 for p in points[max(0, i - 1) : i + 1])


def _grad_jump(points: Sequence[MetricPoint], i: int, t: Thresholds) -> bool:
    before = [p.grad_norm for p in points[max(0, i - 1 - t.spike_window) : max(0, i - 1)]]
    norms = [g for g in before if g is not None]
    if len(norms) < 3 or points[i].grad_norm is None:
        return False
    base = _median(norms)
    return base > 0 and _grad_at_jump(points, i) > t.grad_jump_ratio * base


def _overfit(losses: Sequence[float], eval_loss: float | None, step: int, t: Thresholds) -> list[Finding]:
    tail = losses[-max(2, len(losses) // 5) :]
    final = tail[-1]
    if max(tail) < t.zero_loss:
        detail: dict[str, Any] = {"final_train_loss": final}
        if eval_loss is not None:
            detail["eval_loss"] = eval_loss
        return [
            Finding(
                "loss_to_zero",
                "warning",
                f"the training loss went to {final:.3g} by step {step}: the model is memorising its "
                "training data" + (f" (eval loss {eval_loss:.3g})" if eval_loss is not None else ""),
                "train fewer epochs or steps, add data (and check it for duplicates), raise weight_decay or "
                "LoRA dropout, and judge the model on the eval loss rather than the training loss",
                step=step,
                detail=detail,
            )
        ]
    if (
        eval_loss is not None
        and math.isfinite(eval_loss)
        and final < 1.0
        and eval_loss > t.eval_gap_ratio * final
    ):
        return [
            Finding(
                "overfit",
                "warning",
                f"eval loss {eval_loss:.3g} is {eval_loss / final:.1f}x the final training loss {final:.3g}",
                "the model fits the training set much better than held-out data: fewer epochs, more or more "
                "varied data, more weight decay; check that train and eval come from the same distribution",
                step=step,
                detail={"final_train_loss": final, "eval_loss": eval_loss},
            )
        ]
    return []


def _rising(points: Sequence[MetricPoint], t: Thresholds) -> list[Finding]:
    losses = [p.loss for p in points]
    n = len(losses)
    third = max(2, n // 3)
    # Medians of six blocks: few candidates for "lowest", so noise alone rarely makes the end look higher.
    size = max(1, (n - third) // 4)
    blocks = [(i, _median(losses[i : i + size])) for i in range(0, n - third - size + 1, size)]
    low_i, low = min(blocks, key=lambda b: b[1])
    last = _median(losses[-third:])
    if low <= 0 or last <= low * (1 + t.rise_ratio):
        return []
    return [
        Finding(
            "loss_rising",
            "warning",
            f"the loss rose from a median of {low:.4g} around step {points[low_i].step} to {last:.4g} over "
            f"the last {third} log steps",
            "the learning rate is likely too high for this model and batch: lower hyperparams.learning_rate "
            "(seed range 1e-6 to 5e-4; try half), raise warmup_ratio, or use a decaying schedule (cosine)",
            step=points[low_i].step,
            detail={"lowest": low, "last_median": last},
        )
    ]


def _up_moves(losses: Sequence[float], ratio: float) -> list[int]:
    return [i for i in range(1, len(losses)) if losses[i] > losses[i - 1] * (1 + ratio)]


def _early_swings(points: Sequence[MetricPoint], early_end: int, t: Thresholds) -> list[Finding]:
    losses = [p.loss for p in points]
    if len(losses) < 2 * early_end:
        return []
    early = _up_moves(losses[:early_end], t.swing_ratio)
    late = _up_moves(losses[early_end - 1 :], t.swing_ratio)
    early_rate, late_rate = len(early) / early_end, len(late) / (len(losses) - early_end + 1)
    if len(early) < t.min_swings or early_rate < 2 * late_rate:
        return []
    lrs = [p.learning_rate for p in points]
    first = points[early[0]]
    if all(lr is not None for lr in lrs):
        peak = max(lr for lr in lrs if lr is not None)
        if first.learning_rate is None or first.learning_rate < 0.9 * peak:
            return []  # the swings came while the LR was still warming up: warmup was not too short
    return [
        Finding(
            "early_swings",
            "warning",
            f"the loss swung up {len(early)} times in the first {early_end} log steps (first at step "
            f"{first.step}), with the learning rate already near its peak",
            "warm up longer: raise hyperparams.warmup_ratio (seed 0.01; try 0.03-0.1) or lower the peak "
            "learning rate",
            step=first.step,
            detail={"swings": len(early), "early_points": early_end},
        )
    ]


def _noisy(points: Sequence[MetricPoint], early_end: int, t: Thresholds) -> list[Finding]:
    losses = [p.loss for p in points[early_end - 1 :]]
    if len(losses) <= t.min_noise_points or min(losses) <= 0:
        return []
    noise = _relative_noise(losses)
    if noise <= t.noise_ratio:
        return []
    return [
        Finding(
            "noisy_loss",
            "warning",
            f"the loss is noisy: about {noise:.0%} from one log step to the next (typical of a small batch)",
            "raise hyperparams.batch_size or gradient_accumulation_steps (the effective batch), or lower the "
            "learning rate; log less often (logging_steps) to average over more steps",
            step=points[early_end].step,
            detail={"noise": round(noise, 4)},
        )
    ]


def _relative_noise(losses: Sequence[float]) -> float:
    """Robust relative standard deviation of the loss around its trend.

    Differences of log-loss between neighbouring points cancel a slow trend; for independent noise of
    relative size s they spread with standard deviation s*sqrt(2). 1.4826 x MAD is that standard deviation,
    robust to a few spikes.
    """
    d = [math.log(b) - math.log(a) for a, b in zip(losses, losses[1:], strict=False)]
    centre = _median(d)
    return 1.4826 * _median([abs(x - centre) for x in d]) / math.sqrt(2)


# ---------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Recognise known training failures in a log file.")
    parser.add_argument("log", help="a saved engine or pod log ('-' for stdin)")
    parser.add_argument("--exit-code", type=int, default=None, help="the process's exit code, if known")
    args = parser.parse_args(argv)
    stream = sys.stdin if args.log == "-" else open(args.log, encoding="utf-8", errors="replace")  # noqa: SIM115
    with stream:
        findings = diagnose_log((line.rstrip("\n") for line in stream), args.exit_code)
    print(format_findings(findings) if findings else "no known failure recognised")
    return 1 if any(f.severity == "error" for f in findings) else 0


if __name__ == "__main__":
    raise SystemExit(main())
