"""`vary create IMAGE...`: variations of any common image, from the command line, through the openai SDK.

The endpoint takes only square PNGs under 4 MB. Most photos are not, so each image is turned into
one first (EXIF rotation applied, cropped or padded to a square, scaled down to at most 1024 px,
PNG), and the command says what it did. Several images are blended, by `--weights` if given.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from vary.cli.client_output import api_message, fail, progress, unwritable, write_new

MAX_SIDE = 1024  # the largest output size: a bigger input adds upload time, not detail
MAX_BYTES = 4 * 1024 * 1024  # the endpoint's limit: a PNG *less than* 4 MB
SIZES = ("256x256", "512x512", "1024x1024")
MAX_IMAGES = 5  # the endpoint's limit
DEFAULT_SERVER = "http://127.0.0.1:8000"
ORIENTATION = 0x0112  # the EXIF tag


@dataclass(frozen=True)
class SquarePng:
    data: bytes
    changes: list[str]  # what was done to the input, in words


def square_png(data: bytes, *, fit: str = "crop", max_side: int = MAX_SIDE, max_bytes: int = MAX_BYTES) -> SquarePng:
    """Any image Pillow reads as a square RGB(A) PNG of at most `max_side` px and under `max_bytes`."""
    image: Image.Image
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError("not an image this command can read (PNG, JPEG, WebP, GIF, BMP, TIFF)") from exc
    changes = []
    source_format = image.format or "image"
    if image.getexif().get(ORIENTATION, 1) != 1:  # phones store portraits sideways, with this tag
        image = ImageOps.exif_transpose(image)
        changes.append("rotated as its EXIF orientation says")
    image = image.convert("RGBA" if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info else "RGB")
    width, height = image.size
    if width != height:
        if fit == "pad":
            side = max(width, height)
            canvas = Image.new(image.mode, (side, side), (255, 255, 255, 0) if image.mode == "RGBA" else "white")
            canvas.paste(image, ((side - width) // 2, (side - height) // 2))
            image = canvas
            changes.append(f"padded {width}x{height} to {side}x{side}")
        else:
            side = min(width, height)
            left, top = (width - side) // 2, (height - side) // 2
            image = image.crop((left, top, left + side, top + side))
            changes.append(f"cropped {width}x{height} to its centre {side}x{side}")
    squared = image.width
    side = min(squared, max_side)
    while True:
        if image.width != side:
            image = image.resize((side, side), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=False)
        if buffer.tell() < max_bytes:
            break
        side = int(side * 0.8)  # a noisy photo can exceed 4 MB as PNG even at 1024 px
    if side != squared:
        changes.append(f"scaled to {side}x{side}")
    if source_format != "PNG":
        changes.append(f"converted from {source_format} to PNG ({_size(buffer.tell())})")
    elif changes:
        changes.append(f"now {_size(buffer.tell())}")
    return SquarePng(buffer.getvalue(), changes)


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 1e6 else f"{max(1, round(count / 1e3))} KB"


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    create = commands.add_parser(
        "create", help="make variations of an image on a vary server (any common format, any shape)"
    )
    create.add_argument(
        "images",
        type=Path,
        nargs="+",
        metavar="image",
        help="the image: PNG, JPEG, WebP, GIF, BMP or TIFF, any shape; up to five are blended",
    )
    create.add_argument("--weights", help="how much each image weighs in the blend, e.g. 0.7,0.3 (default equal)")
    create.add_argument("-n", type=int, default=1, choices=range(1, 11), metavar="N", help="how many (1-10, default 1)")
    create.add_argument("--size", choices=SIZES, default="1024x1024", help="output size (default 1024x1024)")
    create.add_argument(
        "--model",
        help="the model (default: the server's default); several, comma-separated (a,b,c), are compared: the same "
        "input and seed on each, and a contact sheet of them all",
    )
    create.add_argument(
        "--seed", type=int, help="the same seed gives the same images again (with several models: one is drawn)"
    )
    create.add_argument("--fit", choices=("crop", "pad"), default="crop", help="make it square by crop or pad")
    create.add_argument(
        "--out",
        type=Path,
        default=Path("."),
        help="the folder to write the files to, made if missing (default .); files already there are kept",
    )
    create.add_argument(
        "--server",
        help=f"the server, e.g. 127.0.0.1:8000 (default $VARY_SERVER, $OPENAI_BASE_URL, {DEFAULT_SERVER})",
    )
    create.add_argument("--api-key", help="the API key (default $VARY_API_KEY, then $OPENAI_API_KEY)")


def run(args: argparse.Namespace) -> int:
    import openai  # here, not at the top: the other commands, which import this module's parser, never need it

    from vary.cli import model_compare

    paths: list[Path] = args.images
    if len(paths) > MAX_IMAGES:
        return fail(f"at most {MAX_IMAGES} images can be blended, not {len(paths)}", 2)
    weights = _weights(args.weights, len(paths))
    if isinstance(weights, str):
        return fail(weights, 2)
    models = model_compare.models_of(args.model) if args.model else []
    if isinstance(models, str):
        return fail(models, 2)
    uploads = []
    for path in paths:
        try:
            square = square_png(path.read_bytes(), fit=args.fit)
        except OSError as exc:
            return fail(f"cannot read {path}: {exc.strerror}", 2)
        except ValueError as exc:
            return fail(f"{path}: {exc}", 2)
        if square.changes:
            print(f"{path.name}: {', '.join(square.changes)}", file=sys.stderr)
        uploads.append((path.stem + ".png", square.data, "image/png"))
    extra: dict[str, object] = {}
    if args.seed is not None:
        extra["seed"] = args.seed
    if weights is not None:
        extra["image_weights"] = args.weights

    base_url = _api_base(args.server or os.environ.get("VARY_SERVER") or os.environ.get("OPENAI_BASE_URL"))
    api_key = args.api_key or os.environ.get("VARY_API_KEY") or os.environ.get("OPENAI_API_KEY")
    if not api_key:
        return fail("no API key: pass --api-key or set VARY_API_KEY (a server run with --no-auth takes any)", 2)
    problem = unwritable(args.out)  # checked before asking: the images are made (and billed) by then
    if problem:
        return fail(problem, 2)
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=2, timeout=600)
    stem = "+".join(path.stem for path in paths)
    if len(models) > 1:
        return model_compare.compare(
            client,
            uploads,
            models,
            n=args.n,
            size=args.size,
            seed=args.seed if args.seed is not None else model_compare.draw_seed(),
            extra=extra,
            out=args.out,
            stem=stem,
            inputs=[(path.name, data) for path, (_, data, _) in zip(paths, uploads, strict=True)],
        )
    try:
        with progress(f"Making {args.n} variation{'s' if args.n > 1 else ''} at {args.size} on {base_url}"):
            result = client.images.create_variation(
                # A list goes out as image[] parts; the SDK's type names one file.
                image=uploads[0] if len(uploads) == 1 else uploads,  # type: ignore[arg-type]
                n=args.n,
                size=args.size,
                response_format="b64_json",
                model=models[0] if models else openai.omit,
                extra_body=extra or None,
            )
    except openai.APIStatusError as exc:
        return fail(f"the server refused the request ({exc.status_code}): {api_message(exc)}", 1)
    except openai.APIConnectionError:
        return fail(f"cannot reach a server at {base_url}; is `vary serve` running there?", 1)

    for item in result.data or []:
        print(write_new(args.out, f"{stem}-variation", base64.b64decode(item.b64_json or "")))
    return 0


def _weights(raw: str | None, count: int) -> list[float] | str | None:
    """`--weights` as numbers, or what is wrong with it; the server checks them again."""
    if raw is None:
        return None
    try:
        weights = [float(part) for part in raw.split(",")]
    except ValueError:
        return f"--weights must be comma-separated numbers, not {raw!r}"
    if len(weights) != count:
        values = f"{len(weights)} value{'s' if len(weights) != 1 else ''}"
        return f"--weights has {values} for {count} image{'s' if count != 1 else ''}: give one per image"
    return weights


def _api_base(server: str | None) -> str:
    base = (server or DEFAULT_SERVER).rstrip("/")
    if "://" not in base:  # host:port, as curl takes it
        base = f"http://{base}"
    return base if base.endswith("/v1") else base + "/v1"
