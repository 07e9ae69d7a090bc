"""JSONL and JSON files: read with line numbers in every error, append complete records only,
resume, write atomically (one helper for every file that must never be seen half-written).

Depends on nothing else in reasonax, so every layer (eval, sample, train) can use it.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path


class JsonlError(ValueError):
    """A bad line; the message starts with 'file:line:'."""


def read(path: str | os.PathLike, skip_bad: bool = False, bad_lines: list | None = None,
         error: type[ValueError] = JsonlError) -> Iterator[tuple[int, dict]]:
    """(line number, record) for each non-blank line of a .jsonl or .jsonl.gz file.

    A bad line raises `error` naming file and line, or with skip_bad is skipped and its
    (line, reason) appended to `bad_lines`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    lineno = 0
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    problem = None if isinstance(rec, dict) else f"expected a JSON object, got {type(rec).__name__}"
                except json.JSONDecodeError as e:
                    problem = f"invalid JSON ({e.msg})"
                if problem is None:
                    yield lineno, rec
                elif not skip_bad:
                    raise error(f"{path}:{lineno}: {problem}")
                elif bad_lines is not None:
                    bad_lines.append((lineno, problem))
    except UnicodeDecodeError as e:
        raise error(f"{path}:{lineno + 1}: not UTF-8 ({e.reason})") from None
    except (OSError, EOFError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise error(f"{path}: unreadable ({e})") from None


def field(rec: dict, name: str, where, lineno: int | None = None, error: type[ValueError] = JsonlError):
    """rec[name] (dotted names reach nested dicts) or `error` naming where and the missing field.
    where: 'file:line' or a path (then lineno is appended)."""
    loc = f"{where}:{lineno}" if lineno is not None else str(where)
    cur = rec
    for part in name.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise error(f"{loc}: missing field {name!r} (fields: {sorted(rec)[:10]})")
        cur = cur[part]
    return cur


def drop_partial_tail(path: str | os.PathLike) -> int:
    """Remove a trailing line without its newline (a record cut by a crash). Returns bytes removed."""
    path = Path(path)
    if not path.exists():
        return 0
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep < len(data):
        with open(path, "r+b") as f:
            f.truncate(keep)
    return len(data) - keep


def append(path: str | os.PathLike, records: list[dict]) -> None:
    """Append whole records in one write, then flush and fsync: a crash leaves complete lines only
    (plus at most one cut line, which drop_partial_tail removes on resume)."""
    if not records:
        return
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    with open(path, "ab") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path: str | os.PathLike, write) -> None:
    """write(f) into path + '.tmp' (a binary file), fsync it, then rename it over path: a reader
    (or a resumed run) sees the old file or the whole new one, never a part."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rewrite(path: str | os.PathLike, records: list[dict]) -> None:
    """Atomically replace the file's contents with these records."""
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    write_atomic(path, lambda f: f.write(payload))


def write_json(path: str | os.PathLike, obj, **dumps) -> None:
    """Atomically write one JSON document (json.dumps keyword arguments in dumps)."""
    write_atomic(path, lambda f: f.write(json.dumps(obj, **dumps).encode("utf-8")))
