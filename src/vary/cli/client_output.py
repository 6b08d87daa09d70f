"""What `vary create` shows and writes: a spinner on a terminal, the server's message, files never overwritten."""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fail(message: str, code: int) -> int:
    print(f"vary: {message}", file=sys.stderr)
    return code


def api_message(exc: Exception) -> str:
    """The server's own words from an openai SDK error (its `error.message`), else the error's."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return str(exc)


def unwritable(out: Path) -> str | None:
    """Why the images could not be written to `out` (made if missing); None when they can."""
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file, not a folder: name a folder (made if missing)"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"--out {out}: cannot make this folder: {exc.strerror}"
    if not os.access(out, os.W_OK | os.X_OK):
        return f"--out {out}: this folder is not writable"
    return None


def write_new(out: Path, stem: str, data: bytes) -> Path:
    """Writes to the next free `{stem}-{k}.png`: an earlier run's files are never overwritten."""
    for k in itertools.count(1):
        path = out / f"{stem}-{k}.png"
        try:
            with open(path, "xb") as file:  # x: fails if the file exists, even one made meanwhile
                file.write(data)
        except FileExistsError:
            continue
        return path
    raise AssertionError("unreachable")


@contextmanager
def progress(label: str) -> Iterator[None]:
    """A spinner with the seconds waited, on a terminal; one line otherwise (logs, pipes). "done" is said only
    when the work succeeded: a refusal is said by the caller, on a clean line."""
    if not sys.stderr.isatty():
        print(f"{label}...", file=sys.stderr)
        yield
        return
    done = threading.Event()
    succeeded = False
    started = time.monotonic()

    def spin() -> None:
        for frame in itertools.cycle("|/-\\"):
            print(f"\r{frame} {label}... {time.monotonic() - started:.0f}s", end="", file=sys.stderr, flush=True)
            if done.wait(0.1):
                break
        if succeeded:
            print(f"\r  {label}: done in {time.monotonic() - started:.1f}s", file=sys.stderr)
        else:
            print("\r\x1b[2K", end="", file=sys.stderr, flush=True)  # the spinner's line erased

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    try:
        yield
        succeeded = True
    finally:
        done.set()
        spinner.join()
