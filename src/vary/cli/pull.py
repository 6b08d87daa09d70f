"""`vary pull [MODEL ...]`: download exactly the files each model loads, and no more, before serving it.

The files come from each engine's `hub_files()`, the same declaration loading reads, through
huggingface_hub's `snapshot_download`: into the standard HF cache (or `--local-dir`), resumable,
with its progress bars. The total size is said first.
"""

from __future__ import annotations

import sys
from pathlib import Path

from huggingface_hub import constants

from vary.engines.diffusion import Placement
from vary.engines.weights import HubFiles, bound_hub_timeouts, download, hub_trouble, missing_files, total_size
from vary.service.catalogue import CatalogueEntry, CatalogueError, catalogue_for
from vary.settings import DEFAULT_MODEL, Settings


def run(models: list[str], config: Path | None, local_dir: Path | None, settings: Settings) -> int:
    """Logging is already configured, as text with progress bars (vary.cli imports this module after it)."""
    try:
        chosen: list[CatalogueEntry] = (
            list(catalogue_for(config, DEFAULT_MODEL).models)
            if config is not None
            else [
                model
                for name in models or [DEFAULT_MODEL]
                for model in catalogue_for(None, name, settings.accept_license).models
            ]
        )
    except CatalogueError as exc:
        print(f"vary: {exc}", file=sys.stderr)
        return 2
    # The same placement as `vary serve`: it decides whether fp16 files are the ones to fetch.
    placement = Placement(device=settings.device, dtype=settings.dtype)
    plan: list[tuple[str, HubFiles]] = [
        (model.name, files)
        for model in chosen
        if model.local
        for files in model.build(placement=placement).hub_files().values()
    ]
    if not plan:
        print("Nothing to download: these models are tiny-random twins, local directories or remote providers.")
        return 0
    for name, files in plan:
        if files.gated_by:
            print(
                f"{name}: {files.repo_id} is gated: its files download with HF_TOKEN (or `hf auth login`) of a "
                f"Hugging Face account that accepted the {files.gated_by} on https://huggingface.co/{files.repo_id}"
            )
    bound_hub_timeouts()
    try:
        sizes = [total_size(files) for _, files in plan]
        for (name, files), size in zip(plan, sizes, strict=True):
            print(f"{name}: {len(files.files)} files from {files.repo_id}, {_human(size)}")
        print(f"{_human(sum(sizes))} in all (files already downloaded are not fetched again).", flush=True)
        for name, files in plan:
            folder = download(files, local_dir=local_dir)
            missing = missing_files(folder, files)
            if missing:
                print(f"vary: {name}: {files.repo_id} has no {missing[0]}", file=sys.stderr)
                return 1
            print(f"{name}: {files.repo_id} is in {folder}", flush=True)
    except KeyboardInterrupt:
        print("vary: interrupted; `vary pull` again resumes where it stopped.", file=sys.stderr)
        return 130
    except Exception as exc:  # the Hub's many errors, said in one line; resumable from where it stopped
        print(f"vary: pull failed: {hub_trouble(exc)}. {ways_out()}", file=sys.stderr)
        return 1
    served = " ".join(f"--model {name}" for name in dict.fromkeys(name for name, _ in plan))
    where = f" (point --model or the catalogue's weights at {local_dir})" if local_dir else ""
    print(f"Done: `vary serve {served if not config else '--config ' + str(config)}` now starts offline{where}.")
    return 0


def ways_out() -> str:
    """What to do when the Hub cannot help, as `vary serve` says it when weights are missing."""
    hub = (
        "unset HF_HUB_OFFLINE where the Hub is reachable"
        if constants.HF_HUB_OFFLINE
        else "HF_ENDPOINT=URL for a Hub mirror"
    )
    return (
        f"Ways out: {hub}; or pull on a machine that reaches the Hub and copy its cache "
        f"({constants.HF_HUB_CACHE}) here, or its `--local-dir` folder for `--model DIR`; "
        "or `vary serve --model tiny-random` to try vary now, without weights."
    )


def _human(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"
