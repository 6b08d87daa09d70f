"""Many openers at once: processes, each with threads, that open one database together, round after round.

Each opener does what `vary serve` does at its start: `Database.open` (the setup: WAL, the migration) then
`first_key` (the first-key lease), then closes. The processes are real ones (multiprocessing's spawn: a
fresh interpreter each, as two `vary` commands are); they start once and meet at a barrier before each
round, and within a process the threads meet at another, so every round's openers race for real.

`race` yields each round's outcomes as the round ends, so a test checks the database before the next and
fails on the first error. ROUNDS: VARY_OPEN_STRESS_ROUNDS, or the test's short default.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

WAIT_S = 120  # a bound on any one wait; a round takes well under a second when nothing is wrong


def rounds(default: int) -> int:
    """How many rounds a stress test runs: VARY_OPEN_STRESS_ROUNDS to run it longer (or under load)."""
    return int(os.environ.get("VARY_OPEN_STRESS_ROUNDS", default))


@dataclass(frozen=True)
class Outcome:
    process: int
    thread: int
    key: str | None  # the first key, for the one opener that made it
    error: str | None  # the traceback, for an opener that failed


@dataclass(frozen=True)
class Round:
    index: int
    url: str
    outcomes: list[Outcome]

    def errors(self) -> list[str]:
        return [o.error for o in self.outcomes if o.error is not None]

    def keys_made(self) -> list[str]:
        return [o.key for o in self.outcomes if o.key is not None]


def _open_once(url: str, data_dir: Path) -> str | None:
    from vary.state.database import Database
    from vary.state.first_key import first_key

    db = Database.open(url)
    try:
        return first_key(data_dir, db)
    finally:
        db.close()


def _one_round(number: int, index: int, url: str, threads: int, data_root: Path) -> list[Outcome]:
    """`threads` threads of this process opening `url` at once."""
    start = threading.Barrier(threads)
    outcomes: list[Outcome] = []

    def opener(thread: int) -> None:
        try:
            start.wait(WAIT_S)
            key = _open_once(url, data_root / f"round-{index}" / f"opener-{number}-{thread}")
            outcomes.append(Outcome(number, thread, key, None))
        except BaseException:  # noqa: BLE001 - every failure is the test's to report
            outcomes.append(Outcome(number, thread, None, traceback.format_exc()))

    running = [threading.Thread(target=opener, args=(k,)) for k in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join(WAIT_S)
    if len(outcomes) < threads:
        outcomes.append(Outcome(number, -1, None, f"an opener still ran after {WAIT_S} s"))
    return outcomes


def _opener_process(
    number: int, urls: Sequence[str], threads: int, data_root: str, barrier: threading.Barrier, results: queue.Queue
) -> None:
    """One process: for each round, waits for the other processes, then opens the round's database."""
    import vary.state.first_key  # noqa: F401 - imported before the first round, as a server has at its start

    for index, url in enumerate(urls):
        barrier.wait(WAIT_S)
        results.put((index, _one_round(number, index, url, threads, Path(data_root))))


def race(urls: Sequence[str], *, processes: int, threads: int, data_root: Path) -> Iterator[Round]:
    """Each of `urls`, in turn, opened by `processes` x `threads` openers at once; one Round per url."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    results = context.Queue()
    workers = [
        context.Process(
            target=_opener_process, args=(n, list(urls), threads, str(data_root), barrier, results), daemon=True
        )
        for n in range(processes)
    ]
    for worker in workers:
        worker.start()
    finished = False
    try:
        for index, url in enumerate(urls):
            outcomes: list[Outcome] = []
            for _ in range(processes):
                try:
                    got, some = results.get(timeout=WAIT_S)
                except queue.Empty:
                    codes = [worker.exitcode for worker in workers]
                    raise AssertionError(f"round {index}: no outcome in {WAIT_S} s (exit codes {codes})") from None
                assert got == index, f"round {got}'s outcome came in round {index}"
                outcomes += some
            yield Round(index, url, outcomes)
        finished = True
    finally:
        for worker in workers:  # our own processes, by their handles: done, or stopped when a round failed
            worker.join(timeout=WAIT_S if finished else 0)
            if worker.is_alive():
                worker.kill()
                worker.join(WAIT_S)
        results.close()
