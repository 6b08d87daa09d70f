"""The `vary` console script run as a person runs it: on a pseudo-terminal, read as the screen shows it."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def console_script() -> list[str]:
    """The installed `vary` script beside this Python (what `pip install` puts on the PATH)."""
    script = Path(sys.executable).with_name("vary")
    return [str(script)] if script.exists() else [sys.executable, "-m", "vary"]


class Terminal:
    """A command whose stdin, stdout and stderr are one pseudo-terminal; `screen` is all it wrote so far."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.args = [*console_script(), *args]
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **(env or {})}
        self.cwd = cwd
        self.output = b""
        self.process: subprocess.Popen[bytes] | None = None
        self.master = -1

    def __enter__(self) -> Terminal:
        self.master, slave = os.openpty()
        self.process = subprocess.Popen(
            self.args, stdin=slave, stdout=slave, stderr=slave, env=self.env, cwd=self.cwd, start_new_session=True
        )
        os.close(slave)
        return self

    @property
    def screen(self) -> str:
        return ANSI.sub("", self.output.decode(errors="replace")).replace("\r\n", "\n")

    def read(self, timeout: float) -> bool:
        """Reads what is there within `timeout`; False once the command has closed the terminal."""
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: every writer closed the terminal
            return False
        self.output += chunk
        return bool(chunk)

    def wait_for(self, text: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.screen:
            assert time.monotonic() < deadline, f"{text!r} never showed; the screen:\n{self.screen}"
            if not self.read(0.2):
                assert text in self.screen, f"{text!r} never showed; the command ended; the screen:\n{self.screen}"
        return self.screen

    def settle(self, seconds: float) -> str:
        """What the screen shows after reading for `seconds` more (lines a server writes after answering)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.read(0.1):
            pass
        return self.screen

    def finish(self, timeout: float = 120) -> int:
        """Reads to the end; the exit status."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while self.read(0.2):
            assert time.monotonic() < deadline, f"still running; the screen:\n{self.screen}"
        return self.process.wait(timeout=timeout)

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.master >= 0:
            os.close(self.master)
            self.master = -1
