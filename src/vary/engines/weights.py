"""Which files an engine loads from which Hub repository, and getting them: offline first, never hanging.

Each engine declares its Hub files once (`hub_files()`); `vary pull` downloads exactly those and
loading reads exactly those, so the two cannot drift. Loading looks in the local cache first and
goes to the Hub only for what is missing, through huggingface_hub's own `snapshot_download`
(resumable, into the standard cache) with every call bounded by a timeout. When the files cannot
be had, `WeightsUnavailable` carries one line: the model, the repository and file, the ways out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import httpx2
from huggingface_hub import HfApi, constants, get_session, snapshot_download
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

log = logging.getLogger("vary.engines")

# The Hub's own seconds for one metadata call (HF_HUB_ETAG_TIMEOUT), applied to every call that has none.
HUB_TIMEOUT_SECONDS = float(constants.HF_HUB_ETAG_TIMEOUT)


@dataclass(frozen=True)
class HubFiles:
    """Exact paths in one repository at one revision: what `vary pull` fetches and loading reads."""

    repo_id: str
    files: tuple[str, ...]
    revision: str | None = None
    # Under `vary pull --local-dir DIR`, the repository goes to DIR/<local_name>.
    local_name: str = ""
    # A gated repository: the licence a Hub account must accept on the repository's page before its token
    # (HF_TOKEN) may download these files. Empty: an open repository.
    gated_by: str = ""

    @property
    def folder(self) -> str:
        return self.local_name or self.repo_id.split("/")[-1]


def _variant(name: str, variant: str | None) -> str:
    stem, _, ext = name.rpartition(".")
    return f"{stem}.{variant}.{ext}" if variant else name


def diffusers_model(folder: str, variant: str | None = None) -> tuple[str, ...]:
    return f"{folder}/config.json", f"{folder}/{_variant('diffusion_pytorch_model.safetensors', variant)}"


def sharded_diffusers_model(folder: str, shards: int) -> tuple[str, ...]:
    """A diffusers model saved in `shards` safetensors files and their index, as large models are on the Hub."""
    if shards == 1:
        return diffusers_model(folder)
    names = (f"diffusion_pytorch_model-{k:05d}-of-{shards:05d}.safetensors" for k in range(1, shards + 1))
    index = f"{folder}/diffusion_pytorch_model.safetensors.index.json"
    return (f"{folder}/config.json", index, *(f"{folder}/{name}" for name in names))


def transformers_model(folder: str, variant: str | None = None) -> tuple[str, ...]:
    return f"{folder}/config.json", f"{folder}/{_variant('model.safetensors', variant)}"


def scheduler(folder: str = "scheduler") -> tuple[str, ...]:
    return (f"{folder}/scheduler_config.json",)


def clip_tokenizer(folder: str) -> tuple[str, ...]:
    return tuple(
        f"{folder}/{name}" for name in ("vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json")
    )


def is_local(weights: str | Path) -> bool:
    return Path(weights).expanduser().exists()


class WeightsUnavailable(Exception):
    """A model's files are neither in the local cache nor to be had from the Hub."""

    def __init__(self, model: str, files: HubFiles, missing: str, reason: str) -> None:
        super().__init__(f"{files.repo_id}/{missing}: {reason}")
        self.model, self.files, self.missing, self.reason = model, files, missing, reason

    def line(self) -> str:
        return (
            f"model {self.model} cannot load: {self.missing} from {self.files.repo_id} is missing ({self.reason}). "
            f"Ways out: `vary pull {self.model}` where the Hub is reachable (HF_ENDPOINT=URL for a mirror), "
            "`--model tiny-random` to try vary without weights, or `--model DIR` for a local copy."
        )


def bound_hub_timeouts(seconds: float = HUB_TIMEOUT_SECONDS) -> None:
    """huggingface_hub sends its metadata calls (repo_info, the file tree) with no timeout: a Hub that accepts
    connections and never answers would hang the start for ever. Every such call gets `seconds` per read."""
    session = get_session()

    def bound(request: httpx2.Request) -> None:
        timeout = request.extensions.get("timeout") or {}
        if all(value is None for value in timeout.values()):
            request.extensions["timeout"] = httpx2.Timeout(seconds).as_dict()

    hooks = session.event_hooks
    if bound.__qualname__ not in {hook.__qualname__ for hook in hooks["request"]}:
        hooks["request"] = [*hooks["request"], bound]
        session.event_hooks = hooks


def missing_files(folder: Path, files: HubFiles) -> list[str]:
    return [name for name in files.files if not (folder / name).is_file()]


def locate(model: str, files: HubFiles) -> Path:
    """The local snapshot folder holding every file of `files`; the Hub is asked only for what is missing."""
    try:
        folder = Path(_snapshot(files, local_files_only=True))
        missing = missing_files(folder, files)
    except LocalEntryNotFoundError:  # nothing cached, or a snapshot known to be incomplete
        missing = list(files.files)
    if not missing:
        return folder
    if constants.HF_HUB_OFFLINE:
        raise WeightsUnavailable(model, files, missing[0], "not in the local cache, and HF_HUB_OFFLINE is set")
    log.info("fetching %d missing file(s) of %s from %s", len(missing), model, files.repo_id)
    try:
        folder = Path(_snapshot(files, local_files_only=False))
    except (OfflineModeIsEnabled, LocalEntryNotFoundError, HfHubHTTPError, httpx2.HTTPError, OSError) as exc:
        log.debug("fetching %s failed", files.repo_id, exc_info=True)
        raise WeightsUnavailable(model, files, missing[0], hub_trouble(exc)) from exc
    missing = missing_files(folder, files)
    if missing:
        raise WeightsUnavailable(model, files, missing[0], f"{files.repo_id} has no such file")
    return folder


def _snapshot(files: HubFiles, *, local_files_only: bool, local_dir: Path | None = None) -> str:
    folder: str = snapshot_download(
        files.repo_id,
        revision=files.revision,
        allow_patterns=list(files.files),
        local_files_only=local_files_only,
        local_dir=local_dir,
        etag_timeout=HUB_TIMEOUT_SECONDS,
    )
    return folder


def hub_trouble(exc: BaseException) -> str:
    """Why the Hub did not help, in a few words, from the exception chain (never its traceback)."""
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    if any(isinstance(e, OfflineModeIsEnabled) for e in chain):
        return "HF_HUB_OFFLINE is set, so the Hub is not asked"
    gated = next((e for e in chain if isinstance(e, GatedRepoError)), None)
    if gated is not None:
        return (
            f"{gated.repo_id or 'the repository'} is gated: HF_TOKEN (or `hf auth login`) must be a token of a "
            "Hugging Face account that accepted its licence on the repository's page"
        )
    if any(isinstance(e, (httpx2.TimeoutException, TimeoutError)) for e in chain):
        return f"the Hub at {constants.ENDPOINT} did not answer within {HUB_TIMEOUT_SECONDS:g} s"
    if any(isinstance(e, (httpx2.ConnectError, ConnectionError)) for e in chain):
        return f"the Hub at {constants.ENDPOINT} cannot be reached"
    root = chain[-1]
    first = " ".join(str(root).split())[:200]
    return f"the Hub at {constants.ENDPOINT} answered {type(root).__name__}{': ' + first if first else ''}"


def total_size(files: HubFiles) -> int:
    """Bytes of `files` on the Hub (the sizes of LFS files are their contents')."""
    infos = HfApi().get_paths_info(files.repo_id, paths=list(files.files), revision=files.revision)
    return sum(getattr(info, "size", 0) or 0 for info in infos)


def download(files: HubFiles, *, local_dir: Path | None = None) -> Path:
    """`vary pull`: the files into the HF cache (or `local_dir`/<folder>), resumable, with the Hub's progress bars."""
    target = local_dir / files.folder if local_dir is not None else None
    return Path(_snapshot(files, local_files_only=False, local_dir=target))
