"""Read what a W&B run wrote offline (`WANDB_MODE=offline`): `wandb/offline-run-*/run-*.wandb`.

wandb 0.31 has no Python reader for this file (its internals moved to the Go `wandb-core`) and writes no
`files/wandb-summary.json` offline, so this module parses the file itself. It is a LevelDB-style log: a 7-byte file
header (b":W&B", magic 0xBEE1, version), then 32 KiB blocks of chunks, each chunk a 7-byte header (crc32, length,
type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4) and its bytes; a block's tail shorter than a header is zero padding. The
chunks join into serialised `wandb.proto.wandb_internal_pb2.Record`s (history, summary, config, ...).

    run = read_offline_run("logs/train/runs/.../wandb/offline-run-...")
    run.run_id, run.config["model.width"], run.summary["flops"], run.history_keys
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HEADER = struct.Struct("<4sHB")  # ident, magic, version
CHUNK = struct.Struct("<IHB")  # crc32, length, type
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _record_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("run-*.wandb"))
        if len(found) != 1:
            raise FileNotFoundError(f"expected one run-*.wandb in {path}, found {len(found)}")
        return found[0]
    return path


def iter_record_bytes(path: str | Path) -> Iterator[bytes]:
    """The serialised records of a `.wandb` file (or of the one in a run directory), in order."""
    data = _record_file(path).read_bytes()
    ident, magic, _ = HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path}: not a W&B run file (header {data[: HEADER.size]!r})")
    offset, pending = HEADER.size, bytearray()
    while offset + CHUNK.size <= len(data):
        left_in_block = BLOCK - offset % BLOCK
        if left_in_block < CHUNK.size:  # zero padding at a block's end
            offset += left_in_block
            continue
        _, length, kind = CHUNK.unpack_from(data, offset)
        if kind == 0 and length == 0:  # zero padding (or a block not yet written)
            offset += left_in_block
            continue
        start = offset + CHUNK.size
        if start + length > len(data):  # the file ends inside this chunk: wandb-core is still writing it
            return
        payload = data[start : start + length]
        offset = start + length
        if kind == FULL:
            yield bytes(payload)
        elif kind == FIRST:
            pending = bytearray(payload)
        elif kind == MIDDLE:
            pending += payload
        elif kind == LAST:
            yield bytes(pending + payload)
            pending = bytearray()
        else:
            raise ValueError(f"{path}: unknown chunk type {kind} at byte {offset - length - CHUNK.size}")


def iter_records(path: str | Path):
    """The `wandb_internal_pb2.Record`s of a `.wandb` file (or of the one in a run directory)."""
    from wandb.proto import wandb_internal_pb2

    for raw in iter_record_bytes(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        yield record


def _key(item) -> str:
    return item.key or ".".join(item.nested_key)


def _set(target: dict[str, Any], item, value: Any) -> None:
    """An item names its key either flat (`key`) or as a path into nested values (`nested_key`, e.g.
    ["profile/layers", "_type"] for one field of a logged table's reference)."""
    if item.key or len(item.nested_key) < 2:
        target[_key(item)] = value
        return
    *parents, last = item.nested_key
    for name in parents:
        if not isinstance(target.get(name), dict):
            target[name] = {}
        target = target[name]
    target[last] = value


def _remove(target: dict[str, Any], item) -> None:
    path = [item.key] if item.key else list(item.nested_key)
    for name in path[:-1]:
        target = target.get(name) if isinstance(target.get(name), dict) else {}
    target.pop(path[-1], None)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


@dataclass
class OfflineRun:
    """The run's id and project (its `run` record), final config and summary (later updates win), and every history
    row."""

    run_id: str | None = None
    project: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def history_keys(self) -> set[str]:
        return {key for row in self.history for key in row}

    def tables(self) -> dict[str, dict[str, Any]]:
        """Logged `wandb.Table`s: key -> the last reference to its table file (`_type` "table-file")."""
        found = {}
        for row in self.history + [self.summary]:
            for key, value in row.items():
                if isinstance(value, dict) and value.get("_type") == "table-file":
                    found[key] = value
        return found


def complete_records(path: str | Path, wait_s: float = 20.0) -> list:
    """The file's records once W&B has written its `exit` record, waiting up to `wait_s` seconds for it (then
    whatever is there: a killed run never writes one). `run.finish()` returns before wandb-core has flushed the
    file's last partial 32 KiB block: read at once, a finished run's file can end at 32768 bytes, without its last
    records (seen in fresh-clone CI; 1 of 6 finishes in a loop here), or end inside a record being written."""
    from google.protobuf.message import DecodeError

    deadline = time.monotonic() + wait_s
    while True:
        try:
            records = list(iter_records(path))
        except DecodeError:  # read in the middle of a write: the bytes on disk are not whole records yet
            if time.monotonic() > deadline:
                raise
            records = []
        if any(record.WhichOneof("record_type") == "exit" for record in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def read_offline_run(path: str | Path, wait_s: float = 20.0) -> OfflineRun:
    """Config (W&B's own `_wandb` entry left out), summary and history of an offline run directory or of its
    `.wandb` file, once complete (`complete_records`); values are decoded from JSON."""
    run = OfflineRun()
    for record in complete_records(path, wait_s):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id, run.project = record.run.run_id or None, record.run.project or None
        elif kind == "config":
            for item in record.config.update:
                _set(run.config, item, _value(item.value_json))
            for item in record.config.remove:
                _remove(run.config, item)
        elif kind == "summary":
            for item in record.summary.update:
                _set(run.summary, item, _value(item.value_json))
            for item in record.summary.remove:
                _remove(run.summary, item)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _set(row, item, _value(item.value_json))
            run.history.append(row)
    run.config.pop("_wandb", None)
    return run
