"""The lake: one small interface over the local filesystem (file://) and S3 (s3:// through boto3).

Engines work on local directories (Spark, transformers and vLLM all want paths); ``fetch`` gives a local
view of a lake directory and ``stage`` a local directory that is published to the lake on success.
On a file:// lake both are the lake path itself, so nothing is copied in the embedded default.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse


class LakeError(RuntimeError):
    pass


def _is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def to_uri(path_or_uri: str | Path) -> str:
    """Plain paths become file:// URIs; URIs pass through."""
    s = str(path_or_uri)
    if "://" in s:
        return s
    return Path(s).expanduser().resolve().as_uri()


def local_path(uri: str) -> Path:
    """The path of a file:// URI (or plain path)."""
    if "://" not in uri:
        return Path(uri)
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        raise LakeError(f"{uri} is not a local file URI")
    return Path(parsed.path)


class Lake:
    """Reads and writes objects under a root URI (file:///... or s3://bucket/prefix)."""

    def __init__(self, root_uri: str, s3_endpoint_url: str | None = None):
        self.root = to_uri(root_uri).rstrip("/")
        self.s3_endpoint_url = s3_endpoint_url
        self._client = None

    @classmethod
    def from_settings(cls) -> Lake:
        from tasks.settings import get_settings

        s = get_settings()
        return cls(s.lake_uri, s.s3_endpoint_url)

    # ------------------------------------------------------------------ addressing
    def uri(self, *parts: str) -> str:
        return "/".join([self.root, *(p.strip("/") for p in parts if p)])

    @property
    def s3(self):
        if self._client is None:
            import boto3

            self._client = boto3.client("s3", endpoint_url=self.s3_endpoint_url)
        return self._client

    @staticmethod
    def _split(uri: str) -> tuple[str, str]:
        parsed = urlparse(uri)
        return parsed.netloc, parsed.path.lstrip("/")

    def _keys(self, uri: str) -> Iterator[str]:
        bucket, prefix = self._split(uri)
        prefix = prefix.rstrip("/") + "/"
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                yield obj["Key"]

    # ------------------------------------------------------------------ objects
    def exists(self, uri: str) -> bool:
        if not _is_s3(uri):
            return local_path(uri).exists()
        bucket, key = self._split(uri)
        resp = self.s3.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
        return resp.get("KeyCount", 0) > 0

    def read_bytes(self, uri: str) -> bytes:
        if not _is_s3(uri):
            try:
                return local_path(uri).read_bytes()
            except FileNotFoundError as e:
                raise LakeError(f"{uri} does not exist") from e
        bucket, key = self._split(uri)
        try:
            return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except self.s3.exceptions.NoSuchKey as e:
            raise LakeError(f"{uri} does not exist") from e

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write atomically: readers see the old object or the new one, never a part."""
        if _is_s3(uri):
            bucket, key = self._split(uri)
            self.s3.put_object(Bucket=bucket, Key=key, Body=data)
            return
        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def read_text(self, uri: str) -> str:
        return self.read_bytes(uri).decode("utf-8")

    def write_text(self, uri: str, text: str) -> None:
        self.write_bytes(uri, text.encode("utf-8"))

    def read_json(self, uri: str) -> Any:
        return json.loads(self.read_text(uri))

    def write_json(self, uri: str, obj: Any) -> None:
        self.write_text(uri, json.dumps(obj, ensure_ascii=False, indent=2, default=str))

    def list(self, uri: str) -> list[str]:
        """URIs of all objects (files) below a directory, sorted."""
        if _is_s3(uri):
            bucket, _ = self._split(uri)
            return sorted(f"s3://{bucket}/{k}" for k in self._keys(uri))
        root = local_path(uri)
        if not root.exists():
            return []
        return sorted(p.as_uri() for p in root.rglob("*") if p.is_file())

    def delete(self, uri: str) -> None:
        """Delete an object or a whole directory; missing is fine."""
        if _is_s3(uri):
            bucket, key = self._split(uri)
            keys = [*self._keys(uri), key]
            for i in range(0, len(keys), 1000):
                self.s3.delete_objects(
                    Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True}
                )
            return
        path = local_path(uri)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

    def move_dir(self, src: str, dst: str) -> None:
        """Move a directory. On file:// this is one rename (atomic); on S3 a copy then a delete."""
        if _is_s3(src) != _is_s3(dst):
            raise LakeError("move_dir needs both URIs in the same store")
        if not _is_s3(src):
            d = local_path(dst)
            if d.exists():
                raise LakeError(f"{dst} already exists")
            d.parent.mkdir(parents=True, exist_ok=True)
            os.replace(local_path(src), d)
            return
        sb, sk = self._split(src)
        db, dk = self._split(dst)
        for key in self._keys(src):
            rel = key[len(sk.rstrip("/")) + 1 :]
            self.s3.copy_object(
                Bucket=db, Key=f"{dk.rstrip('/')}/{rel}", CopySource={"Bucket": sb, "Key": key}
            )
        self.delete(src)

    # ------------------------------------------------------------------ directories
    def put_dir(self, local_dir: str | Path, uri: str) -> None:
        local_dir = Path(local_dir)
        if not _is_s3(uri):
            dst = local_path(uri)
            if dst.resolve() != local_dir.resolve():
                shutil.copytree(local_dir, dst, dirs_exist_ok=True)
            return
        bucket, prefix = self._split(uri)
        for p in sorted(local_dir.rglob("*")):
            if p.is_file():
                self.s3.upload_file(
                    str(p), bucket, f"{prefix.rstrip('/')}/{p.relative_to(local_dir).as_posix()}"
                )

    def get_dir(self, uri: str, local_dir: str | Path) -> Path:
        local_dir = Path(local_dir)
        if not _is_s3(uri):
            shutil.copytree(local_path(uri), local_dir, dirs_exist_ok=True)
            return local_dir
        bucket, prefix = self._split(uri)
        found = False
        for key in self._keys(uri):
            found = True
            target = local_dir / key[len(prefix.rstrip("/")) + 1 :]
            target.parent.mkdir(parents=True, exist_ok=True)
            self.s3.download_file(bucket, key, str(target))
        if not found:
            raise LakeError(f"{uri} has no objects")
        return local_dir

    @contextlib.contextmanager
    def fetch(self, uri: str) -> Iterator[Path]:
        """A local, read-only view of a lake file or directory."""
        if not _is_s3(uri):
            path = local_path(uri)
            if not path.exists():
                raise LakeError(f"{uri} does not exist")
            yield path
            return
        with tempfile.TemporaryDirectory(prefix="forgeflow-fetch-") as tmp:
            bucket, key = self._split(uri)
            if any(True for _ in self._keys(uri)):
                yield self.get_dir(uri, Path(tmp) / "d")
            else:
                target = Path(tmp) / Path(key).name
                self.s3.download_file(bucket, key, str(target))
                yield target

    @contextlib.contextmanager
    def stage(self, uri: str) -> Iterator[Path]:
        """A local directory whose contents land at ``uri`` when the block succeeds.

        On S3 nothing arrives before the block ends, so what must outlive a killed process (training
        checkpoints) is published on its own as it is written (trainers/checkpoints.py)."""
        if not _is_s3(uri):
            path = local_path(uri)
            path.mkdir(parents=True, exist_ok=True)
            yield path
            return
        with tempfile.TemporaryDirectory(prefix="forgeflow-stage-") as tmp:
            yield Path(tmp)
            self.put_dir(tmp, uri)
