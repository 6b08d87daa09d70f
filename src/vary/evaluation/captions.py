"""Captions by image file name, from a COCO annotations file, a JSON object, or tab-separated lines.

COCO (`captions_val2017.json`): `images` maps ids to file names and `annotations` holds five
captions per image; the first by annotation id is the image's caption, so a run is repeatable.
A JSON object maps file names to captions; a text file has `file_name<TAB>caption` lines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class CaptionsError(ValueError):
    pass


def read_captions(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CaptionsError(f"{path}: cannot read the file ({exc.strerror})") from None
    if path.suffix.lower() == ".json":
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise CaptionsError(f"{path}: not valid JSON: {exc}") from None
        return _from_json(document, path)
    return _from_lines(text, path)


def _from_json(document: Any, path: Path) -> dict[str, str]:
    if isinstance(document, dict) and "annotations" in document and "images" in document:
        names = {image["id"]: image["file_name"] for image in document["images"]}
        captions: dict[str, str] = {}
        for annotation in sorted(document["annotations"], key=lambda a: a.get("id", 0)):
            name = names.get(annotation["image_id"])
            if name is not None and name not in captions:
                captions[name] = " ".join(str(annotation["caption"]).split())
        return captions
    if isinstance(document, dict) and all(isinstance(v, str) for v in document.values()):
        return {str(name): caption for name, caption in document.items()}
    raise CaptionsError(f"{path}: neither a COCO annotations file nor an object of file name to caption")


def _from_lines(text: str, path: Path) -> dict[str, str]:
    captions = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, tab, caption = line.partition("\t")
        if not tab:
            raise CaptionsError(f"{path}:{number}: expected file_name<TAB>caption")
        captions[name.strip()] = caption.strip()
    return captions
