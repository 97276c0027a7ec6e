"""Fault diagnosis: known failures recognised in real message texts, and curve problems on synthetic series."""

from __future__ import annotations

import math
import random

import pytest

from trainers.diagnose import (
    LOG_RULES,
    LogScanner,
    MetricPoint,
    diagnose_history,
    diagnose_log,
    format_findings,
    main,
    summary_tag,
)

# ---------------------------------------------------------------- log diagnosis

# Messages as the libraries print them (PyTorch 2.x, transformers 5, DeepSpeed 0.19, safetensors, gloo),
# and this project's own errors.
REAL_LINES = {
    "cuda_oom": "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 22.00 MiB. GPU 0 has a total "
    "capacity of 23.65 GiB of which 11.06 MiB is free. Including non-PyTorch memory, this process has "
    "23.60 GiB memory in use.",
    "cpu_oom": "RuntimeError: [enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
    "memory: you tried to allocate 400000000000000 bytes. Error code 12 (Cannot allocate memory)",
    "rank_killed": "traceback : Signal 9 (SIGKILL) received by PID 4242",
    "nan_loss": "{'loss': 'nan', 'grad_norm': 'nan', 'learning_rate': '0.0001', 'epoch': '0.2'}",
    "fp16_overflow": "[2026-01-01 10:00:00,000] [INFO] [loss_scaler.py:183:update_scale] [deepspeed] OVERFLOW! "
    "Rank 0 Skipping step. Attempted loss scale: 65536, reducing to 32768",
    "collective_timeout": "[rank1]:[E626 06:24:44.903881913 ProcessGroupNCCL.cpp:616] [Rank 1] Watchdog caught "
    "collective operation timeout: WorkNCCL(SeqNum=808, OpType=ALLREDUCE, NumelIn=9801523, NumelOut=9801523, "
    "Timeout(ms)=600000) ran for 600020 milliseconds before timing out.",
    "nccl_error": "torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/"
    "ProcessGroupNCCL.cpp:1970, unhandled system error (run with NCCL_DEBUG=INFO for details)",
    "checkpoint_missing": "ValueError: No valid checkpoint found in output directory (/lake/models/r1/checkpoints)",
    "checkpoint_corrupt": "safetensors_rust.SafetensorError: Error while deserializing header: invalid header length",
    "tokenizer_mismatch": "ValueError: Cannot use chat template functions because tokenizer.chat_template is not "
    "set and no template argument was passed! For information about writing templates and setting the "
    "tokenizer.chat_template attribute, please see the documentation",
    "dataset_unusable": "DataError: file:///lake/datasets/x/v1: expected columns context and target (or question "
    "and std_answer); found ['id', 'text']",
    "disk_full": "OSError: [Errno 28] No space left on device: '/lake/models/r1/checkpoints/checkpoint-500'",
    "gpu_unavailable": "AssertionError: Torch not compiled with CUDA enabled",
    "spec_invalid": "2026-01-01 ERROR forgeflow.engine: file:///lake/runs/r/spec.json: 1 invalid field(s)",
    "hub_offline": "OSError: We couldn't connect to 'https://huggingface.co' to load the files, and couldn't "
    "find them in the cached files.",
}


def test_every_rule_has_a_real_example():
    assert {r.kind for r in LOG_RULES} == set(REAL_LINES)


@pytest.mark.parametrize("kind", sorted(REAL_LINES))
def test_real_message_is_recognised_with_its_line(kind):
    lines = ["step 1 ok", "{'loss': '2.31', 'grad_norm': '1.2', 'learning_rate': '2e-05'}", REAL_LINES[kind]]
    findings = diagnose_log(lines)
    assert [f.kind for f in findings] == [kind]
    f = findings[0]
    assert f.line_no == 3 and f.line == REAL_LINES[kind][:500] and f.remedy


def test_other_real_texts_of_the_same_failures():
    cases = {
        "cuda_oom": "RuntimeError: CUDA out of memory. Tried to allocate 12.50 MiB (GPU 0; 10.92 GiB total capacity)",
        "collective_timeout": "RuntimeError: [../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed "
        "out waiting 1800000ms for recv operation to complete",
        "checkpoint_corrupt": "RuntimeError: PytorchStreamReader failed reading zip archive: failed finding "
        "central directory",
        "tokenizer_mismatch": "IndexError: index out of range in self",
        "nan_loss": "trainers.diagnose.TrainingDiverged: training stopped at step 4: the loss is nan",
        "dataset_unusable": "CatalogError: general/x@V1 has usage 'pretrain'; sft_lora can only use sft data",
        "cpu_oom": "[rank1]: MemoryError",
        "rank_killed": "  exitcode  : -9 (pid: 4242)",
    }
    for kind, line in cases.items():
        assert [f.kind for f in diagnose_log([line])] == [kind], line


def test_a_healthy_log_has_no_findings():
    lines = [
        "2026-01-01 INFO forgeflow.trainers.train: model: 1,234 trainable of 5,678 parameters",
        "{'loss': '4.123', 'grad_norm': '2.5', 'learning_rate': '0.0005', 'epoch': '0.1'}",
        "{'train_runtime': '3.2', 'train_samples_per_second': '10', 'train_loss': '3.9', 'epoch': '1'}",
        "2026-01-01 INFO forgeflow.engine: result written to file:///lake/runs/r/result.json",
        "Skip logging GPU metrics. Set logger level to DEBUG for more details.",
    ]
    assert diagnose_log(lines) == []


def test_repeats_are_counted_and_the_first_line_is_kept():
    line = REAL_LINES["collective_timeout"]
    scanner = LogScanner()
    for text in ["start", line, line.replace("Rank 1", "Rank 0"), "end"]:
        scanner.feed(text)
    (f,) = scanner.findings()
    assert f.line_no == 2 and f.count == 2
    assert "line 2 (and 1 more)" in format_findings([f])


@pytest.mark.parametrize("code", [-9, 137])
def test_sigkill_exit_points_at_the_oom_killer(code):
    (f,) = diagnose_log(["training step 12"], exit_code=code)
    assert f.kind == "killed" and "OOM killer" in f.title and f.line_no is None


def test_errors_come_before_warnings():
    findings = diagnose_log([REAL_LINES["fp16_overflow"], REAL_LINES["nan_loss"]])
    assert [f.kind for f in findings] == ["nan_loss", "fp16_overflow"]
    assert summary_tag(findings) == "error: nan_loss; warning: fp16_overflow"
    assert summary_tag([]) == "clean"


def test_cli_reads_a_log_file(tmp_path, capsys):
    log = tmp_path / "pod.log"
    log.write_text("ok\n" + REAL_LINES["disk_full"] + "\n")
    assert main([str(log)]) == 1
    assert "disk_full line 2" in capsys.readouterr().out
    log.write_text("ok\n")
    assert main([str(log)]) == 0


# ---------------------------------------------------------------- curve diagnosis


def curve(
    n: int = 60,
    start: float = 6.0,
    floor: float = 2.0,
    noise: float = 0.02,
    seed: int = 0,
    lr: float = 2e-4,
    warmup: int = 3,
) -> list[MetricPoint]:
    """A normal run: exponential decay to a floor, multiplicative noise, grad norm ~1, warmup then cosine."""
    rng = random.Random(seed)
    points = []
    for i in range(n):
        loss = (floor + (start - floor) * math.exp(-i / (n / 6))) * (1 + rng.gauss(0, noise))
        rate = lr * min(1.0, (i + 1) / warmup) * (0.55 + 0.45 * math.cos(math.pi * i / n))
        points.append(
            MetricPoint(step=(i + 1) * 5, loss=loss, grad_norm=1.0 + rng.gauss(0, 0.05), learning_rate=rate)
        )
    return points


def kinds(points, **kw) -> list[str]:
    return [f.kind for f in diagnose_history(points, **kw)]


@pytest.mark.parametrize("seed", range(10))
def test_a_normal_decaying_curve_has_no_findings(seed):
    assert kinds(curve(seed=seed)) == []
    assert kinds(curve(seed=seed, n=12)) == []
    assert kinds(curve(seed=seed, n=200, noise=0.04)) == []
    assert kinds(curve(seed=seed), eval_loss=2.3) == []


def test_too_few_points_say_nothing_but_nan_still_counts():
    assert kinds(curve(n=4)) == []
    points = curve(n=4)[:3] + [MetricPoint(step=20, loss=float("nan"), grad_norm=float("nan"))]
    (f,) = diagnose_history(points)
    assert f.kind == "nan_loss" and f.step == 20 and f.severity == "error"


def test_nan_points_at_the_first_bad_step():
    points = curve()
    points[30] = MetricPoint(step=points[30].step, loss=3.0, grad_norm=float("inf"))
    points[31] = MetricPoint(step=points[31].step, loss=float("nan"))
    found = diagnose_history(points)
    assert found[0].kind == "nan_loss" and found[0].step == points[30].step


def test_loss_spike_with_grad_norm_jump_points_at_the_step():
    points = curve()
    p = points[40]
    points[40] = MetricPoint(step=p.step, loss=p.loss * 3, grad_norm=12.0, learning_rate=p.learning_rate)
    (f,) = diagnose_history(points)
    assert f.kind == "loss_spike" and f.step == p.step and f.detail["grad_norm_jump"] is True
    assert "grad-norm jump" in f.title and f"step {p.step}" in f.remedy


def test_loss_spike_without_grad_jump_is_told_apart():
    points = curve()
    p = points[40]
    points[40] = MetricPoint(step=p.step, loss=p.loss * 2.5, grad_norm=1.0, learning_rate=p.learning_rate)
    (f,) = diagnose_history(points)
    assert f.kind == "loss_spike" and f.detail["grad_norm_jump"] is False


def test_a_spike_lasting_two_log_steps_is_one_spike():
    points = curve()
    for i in (40, 41):
        p = points[i]
        points[i] = MetricPoint(step=p.step, loss=p.loss * 3, grad_norm=10.0, learning_rate=p.learning_rate)
    assert kinds(points) == ["loss_spike"]


def test_loss_to_zero_is_overfitting():
    points = curve(start=3.0, floor=0.001, noise=0.02)
    (f,) = diagnose_history(points, eval_loss=4.2)
    assert f.kind == "loss_to_zero" and "memorising" in f.title and f.detail["eval_loss"] == 4.2


def test_eval_far_above_train_is_overfitting():
    points = curve(start=3.0, floor=0.3)
    assert kinds(points, eval_loss=0.35) == []
    assert kinds(points, eval_loss=1.5) == ["overfit"]


def test_rising_loss_means_learning_rate_too_high():
    points = curve(n=60)
    rising = [
        MetricPoint(
            step=p.step,
            loss=p.loss * (1 + max(0, i - 20) * 0.03),
            grad_norm=p.grad_norm,
            learning_rate=p.learning_rate,
        )
        for i, p in enumerate(points)
    ]
    (f,) = diagnose_history(rising)
    assert f.kind == "loss_rising" and "learning_rate" in f.remedy


def test_early_swings_at_full_lr_mean_too_little_warmup():
    points = curve(n=60, warmup=1)
    swung = list(points)
    for i in (3, 6, 9, 12):
        p = points[i]
        swung[i] = MetricPoint(
            step=p.step, loss=p.loss * 1.35, grad_norm=p.grad_norm, learning_rate=p.learning_rate
        )
    (f,) = diagnose_history(swung)
    assert f.kind == "early_swings" and f.step == points[3].step and "warmup_ratio" in f.remedy


def test_early_swings_during_a_real_warmup_are_not_blamed_on_it():
    points = curve(n=60, warmup=16)
    swung = list(points)
    for i in (3, 6, 9, 12):
        p = points[i]
        swung[i] = MetricPoint(
            step=p.step, loss=p.loss * 1.35, grad_norm=p.grad_norm, learning_rate=p.learning_rate
        )
    assert "early_swings" not in kinds(swung)


def test_noisy_loss_means_batch_too_small():
    (f,) = diagnose_history(curve(n=80, noise=0.25, seed=3))
    assert f.kind == "noisy_loss" and "batch_size" in f.remedy


def test_findings_serialise_without_empty_fields():
    points = curve()
    p = points[40]
    points[40] = MetricPoint(step=p.step, loss=p.loss * 3, grad_norm=12.0, learning_rate=p.learning_rate)
    d = diagnose_history(points)[0].to_dict()
    assert d["kind"] == "loss_spike" and "line_no" not in d and d["step"] == p.step
