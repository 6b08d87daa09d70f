"""One PNG showing the same input varied by several models, a row each: what `vary create --model a,b,c` writes.

The first row is the input (or the images blended); each model's row has a two-line label (the model;
its licence, time and seed) over its variations, or over its refusal in words. Tiles are at most
TILE pixels a side: a variation of that size or smaller is pasted as it is, pixel for pixel.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

TILE = 256
GAP = 8
MARGIN = 16
LINE = 20  # one line of text
LABEL = 2 * LINE  # the two lines over each row
FONT_SIZE = 14
BACKGROUND, TEXT, QUIET = "white", "#111111", "#4b4b4b"
REFUSED_FILL, REFUSED_EDGE = "#fde2e2", "#b91c1c"
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont  # Pillow's default font is either, by build


@dataclass(frozen=True)
class Row:
    """One model's row: its label lines, and its images or, when it made none, why."""

    title: str
    details: str
    images: Sequence[Image.Image] = ()
    error: str | None = None


@dataclass(frozen=True)
class Layout:
    """Where everything goes; row 0 is the inputs, rows 1.. the models."""

    tile: int
    columns: int
    rows: int  # model rows
    width: int

    def row_top(self, row: int) -> int:
        return MARGIN + LINE + GAP + row * (LABEL + self.tile + GAP)

    def tile_at(self, row: int, column: int) -> tuple[int, int]:
        return MARGIN + column * (self.tile + GAP), self.row_top(row) + LABEL

    @property
    def height(self) -> int:
        return self.row_top(self.rows + 1) - GAP + MARGIN


def layout(side: int, inputs: int, rows: Sequence[Row], *, text_width: int = 0) -> Layout:
    """`side`: the variations' size; `text_width`: the widest label, which the sheet is made wide enough for."""
    tile = min(TILE, side)
    columns = max(inputs, *(len(row.images) for row in rows), 1)
    tiles = columns * tile + (columns - 1) * GAP
    return Layout(tile, columns, len(rows), 2 * MARGIN + max(tiles, text_width, tile))


def contact_sheet(title: str, inputs: Sequence[tuple[str, Image.Image]], rows: Sequence[Row], side: int) -> Image.Image:
    """`inputs`: (caption, image) for each input; `side`: the size the variations were made at."""
    font = ImageFont.load_default(size=FONT_SIZE)
    labels = [title, *(caption for caption, _ in inputs), *(row.title for row in rows), *(r.details for r in rows)]
    widest = max(int(font.getlength(text)) for text in labels)
    where = layout(side, len(inputs), rows, text_width=widest)
    sheet = Image.new("RGB", (where.width, where.height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((MARGIN, MARGIN), title, fill=TEXT, font=font)

    captions = ", ".join(caption for caption, _ in inputs)
    _label(draw, where, 0, "Input" if len(inputs) == 1 else "Inputs, blended", captions, font)
    for column, (_, image) in enumerate(inputs):
        sheet.paste(_tile(image, where.tile), where.tile_at(0, column))
    for index, row in enumerate(rows, start=1):
        _label(draw, where, index, row.title, row.details, font)
        for column, image in enumerate(row.images):
            sheet.paste(_tile(image, where.tile), where.tile_at(index, column))
        if row.error is not None:
            _refusal(draw, where, index, row.error, font)
    return sheet


def _label(draw: ImageDraw.ImageDraw, where: Layout, row: int, title: str, details: str, font: Font) -> None:
    top = where.row_top(row)
    draw.text((MARGIN, top), title, fill=TEXT, font=font)
    draw.text((MARGIN, top + LINE), details, fill=QUIET, font=font)


def _tile(image: Image.Image, tile: int) -> Image.Image:
    image = image.convert("RGB")
    return image if image.size == (tile, tile) else image.resize((tile, tile), Image.Resampling.LANCZOS)


def _refusal(draw: ImageDraw.ImageDraw, where: Layout, row: int, error: str, font: Font) -> None:
    """The reason in a pale red tile where the images would be, wrapped to its width."""
    x, y = where.tile_at(row, 0)
    draw.rectangle((x, y, x + where.tile - 1, y + where.tile - 1), fill=REFUSED_FILL, outline=REFUSED_EDGE)
    per_line = max(8, int((where.tile - 2 * GAP) / font.getlength("n")))
    lines = textwrap.wrap(error, per_line)[: max(1, (where.tile - 2 * GAP) // LINE)]
    draw.multiline_text((x + GAP, y + GAP), "\n".join(lines), fill=TEXT, font=font, spacing=4)
