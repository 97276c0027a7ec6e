"""Write the binary sample files of include/samples/: two small PNG images and a Parquet copy of pretrain.jsonl.

    python scripts/make_samples.py

The images are drawn here (no downloads): a red square and a blue circle, 48x48 RGB, written with zlib only.
The output is deterministic, so re-running leaves the committed files unchanged.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[1] / "include" / "samples"
SIZE = 48
WHITE = (255, 255, 255)


def png(pixels: list[list[tuple[int, int, int]]]) -> bytes:
    """An 8-bit RGB PNG of ``pixels`` (rows of (r, g, b))."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width = len(pixels), len(pixels[0])
    raw = b"".join(b"\x00" + bytes(v for px in row for v in px) for row in pixels)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def red_square() -> list[list[tuple[int, int, int]]]:
    return [
        [(220, 30, 30) if 10 <= x < SIZE - 10 and 10 <= y < SIZE - 10 else WHITE for x in range(SIZE)]
        for y in range(SIZE)
    ]


def blue_circle() -> list[list[tuple[int, int, int]]]:
    c, r2 = (SIZE - 1) / 2, (SIZE / 2 - 8) ** 2
    return [
        [(30, 60, 220) if (x - c) ** 2 + (y - c) ** 2 <= r2 else WHITE for x in range(SIZE)]
        for y in range(SIZE)
    ]


def parquet_copy() -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        json.loads(line) for line in (SAMPLES / "pretrain.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    table = pa.table({"text": [r["text"] for r in rows]})
    pq.write_table(table, SAMPLES / "pretrain.parquet", compression="zstd")


def main() -> None:
    images = SAMPLES / "images"
    images.mkdir(parents=True, exist_ok=True)
    (images / "red_square.png").write_bytes(png(red_square()))
    (images / "blue_circle.png").write_bytes(png(blue_circle()))
    parquet_copy()
    print(f"wrote {images / 'red_square.png'}, {images / 'blue_circle.png'}, {SAMPLES / 'pretrain.parquet'}")


if __name__ == "__main__":
    main()
