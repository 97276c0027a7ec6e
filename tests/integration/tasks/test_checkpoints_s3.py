"""Training checkpoints on an S3 lake (an S3-compatible endpoint on 127.0.0.1): each one is uploaded as it
is saved and counts once its .complete marker is there; keep-N applies in the bucket; resuming downloads
the checkpoint to local scratch."""

from __future__ import annotations

import json

import boto3

from tasks.specs import ResumeSpec, TrainSpec
from tasks.storage import Lake
from trainers import checkpoints as ck


def _local_checkpoint(root, step: int, spec: TrainSpec):
    d = root / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"w" * 10)
    (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (d / ck.META_FILE).write_text(json.dumps({"spec": spec.model_dump(mode="json"), "world_size": 1}))
    return d


def test_checkpoints_publish_prune_and_resume_on_s3(s3_endpoint, tmp_path, monkeypatch):
    from tasks.settings import get_settings

    monkeypatch.setenv("FORGEFLOW_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="ckpt")
    lake = Lake("s3://ckpt/lake", s3_endpoint)
    out = lake.uri("models", "run-1")
    spec = TrainSpec(run_key="run-1", method="pretrain", train_uri=lake.uri("d"), output_uri=out)

    for step in (2, 4, 6):
        ck.publish_checkpoint(
            lake, _local_checkpoint(tmp_path / "scratch", step, spec), ck.checkpoint_uri(out, step)
        )
        ck.prune_checkpoints(lake, out, step, keep=2)
    # An upload cut short: files but no marker.
    lake.write_text(ck.checkpoint_uri(out, 8) + "/model.safetensors", "partial")

    refs = ck.list_checkpoints(lake, ck.checkpoints_uri(out))
    assert [(r.step, r.complete) for r in refs] == [(4, True), (6, True), (8, False)]
    assert ck.resolve_checkpoint(lake, "latest", out).uri == f"{out}/checkpoints/checkpoint-6"

    resume = ck.prepare_resume(lake, spec.model_copy(update={"resume": ResumeSpec(from_uri="latest")}))
    assert resume.step == 6 and resume.local.is_relative_to(tmp_path / "home")
    assert (resume.local / "model.safetensors").read_bytes() == b"w" * 10
    assert (resume.local / ck.COMPLETE_MARKER).is_file() and resume.continues

    ck.prune_checkpoints(lake, out, 6, keep=1)  # the interrupted upload and the older one go
    assert [r.step for r in ck.list_checkpoints(lake, ck.checkpoints_uri(out))] == [6]
    get_settings.cache_clear()
