"""`vary create IMAGE --model a,b,c`: the same input and seed on several models, and one contact sheet of them.

The requests go out together, at most AT_ONCE at a time (each model queues on the server; a dozen
models should not all wait there at once). A model that refuses gets its reason in its row of the
sheet and on stderr; the others are written all the same, and the exit status is 1.
"""

from __future__ import annotations

import base64
import io
import re
import secrets
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from vary.cli.client_output import api_message, progress, write_new
from vary.cli.contact_sheet import Row, contact_sheet

AT_ONCE = 3
SEED_LIMIT = 2**31 - 1  # seeds every model takes: Bedrock's, the narrowest, go up to 2**31 - 2


@dataclass(frozen=True)
class Outcome:
    """What one model answered: its images, the seed it used (a hosted provider reports none), its time."""

    model: str
    seconds: float
    images: tuple[bytes, ...] = ()
    seed: str | None = None
    error: str | None = None


def draw_seed() -> int:
    return secrets.randbelow(SEED_LIMIT)


def models_of(text: str) -> list[str] | str:
    """`--model a,b,c` as a list, or what is wrong with it."""
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        return f"--model {text!r} has an empty name: give model names separated by commas"
    if len(set(names)) != len(names):
        return f"--model {text!r} names a model twice"
    return names


def compare(
    client: Any,
    uploads: list[tuple[str, bytes, str]],
    models: list[str],
    *,
    n: int,
    size: str,
    seed: int,
    extra: dict[str, object],
    out: Path,
    stem: str,
    inputs: list[tuple[str, bytes]],
) -> int:
    """Every model's variations written, then the sheet; the file paths on stdout, the rest on stderr."""
    import openai

    try:
        licences = {card.id: getattr(card, "license", None) for card in client.models.list()}
    except openai.APIStatusError as exc:  # a wrong key: said once, before any model is asked
        print(f"vary: the server refused the request ({exc.status_code}): {api_message(exc)}", file=sys.stderr)
        return 1
    except openai.APIConnectionError:
        print(f"vary: cannot reach a server at {client.base_url}; is `vary serve` running there?", file=sys.stderr)
        return 1

    def ask(model: str) -> Outcome:
        started = time.monotonic()
        try:
            raw = client.images.with_raw_response.create_variation(
                image=uploads[0] if len(uploads) == 1 else uploads,
                n=n,
                size=size,
                response_format="b64_json",
                model=model,
                extra_body={**extra, "seed": seed},
            )
        except openai.APIStatusError as exc:
            reason = f"refused ({exc.status_code}): {api_message(exc)}"
            return Outcome(model, time.monotonic() - started, error=reason)
        except openai.APIConnectionError:
            return Outcome(model, time.monotonic() - started, error="the server could not be reached")
        seconds = time.monotonic() - started
        images = tuple(base64.b64decode(item.b64_json or "") for item in raw.parse().data or [])
        return Outcome(model, seconds, images, raw.headers.get("x-vary-seed"))

    label = f"Making {n} variation{'s' if n > 1 else ''} at {size} with each of {len(models)} models, seed {seed}"
    with progress(label), ThreadPoolExecutor(max_workers=min(AT_ONCE, len(models))) as pool:
        outcomes = list(pool.map(ask, models))

    rows = []
    for outcome in outcomes:
        seed_said = f"seed {outcome.seed}" if outcome.seed else "the provider's own seed"
        details = f"{licences.get(outcome.model) or 'licence unknown'} · {outcome.seconds:.1f} s"
        if outcome.error is not None:
            print(f"  {outcome.model}: {outcome.error}", file=sys.stderr)
            rows.append(Row(outcome.model, details, error=outcome.error))
            continue
        print(f"  {outcome.model}: {len(outcome.images)} in {outcome.seconds:.1f}s, {seed_said}", file=sys.stderr)
        for data in outcome.images:
            print(write_new(out, f"{stem}-{slug(outcome.model)}-variation", data))
        rows.append(Row(outcome.model, f"{details} · {seed_said}", [_image(data) for data in outcome.images]))
    if any(outcome.images for outcome in outcomes):
        side = int(size.split("x")[0])
        title = f"{' + '.join(name for name, _ in inputs)}: {len(models)} models, seed {seed}, {size}, by vary"
        sheet = contact_sheet(title, [(name, _image(data)) for name, data in inputs], rows, side)
        buffer = io.BytesIO()
        sheet.save(buffer, format="PNG")
        print(write_new(out, f"{stem}-contact-sheet", buffer.getvalue()))
    return 1 if any(outcome.error is not None for outcome in outcomes) else 0


def slug(model: str) -> str:
    """A model name as a safe part of a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", model).strip(".-") or "model"


def _image(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")
