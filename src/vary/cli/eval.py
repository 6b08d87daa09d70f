"""`vary eval IMAGES_DIR --model M [--model M2 ...]`: variations of a folder of images, scored, in a report folder.

The models are built and served in this process the way `vary serve` builds them
(vary.app.build_registry), and every image comes from the variation service, so the figures are the
API's. In-process rather than through a server: nothing to start, no port, key or database, and the
latencies are the service's own, without an HTTP hop on loopback in them. Inputs are made square
PNGs as `vary create` makes them, since that is what the endpoint takes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the light commands never import torch; `vary eval` imports these in _run
    from vary.imaging import ImageDecoder
    from vary.service.registry import ModelRegistry
    from vary.settings import Settings

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SIZES = ("256x256", "512x512", "1024x1024")
PROTOCOLS = ("ip-adapter",)


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "eval",
        help="score models' variations of a folder of images: fidelity, diversity, speed, a contact sheet",
        description="Generate variations of every image in IMAGES_DIR through vary's variation service, score them "
        "with CLIP and write report.json and report.html (open it from disk) to --out.",
    )
    parser.add_argument("images_dir", metavar="IMAGES_DIR", help="a folder of images (PNG, JPEG, WebP, ...)")
    parser.add_argument(
        "--model",
        dest="models",
        action="append",
        metavar="M",
        help="a model to evaluate, repeatable: a built-in name, a local model directory, or a model of --catalogue",
    )
    parser.add_argument(
        "--catalogue",
        "--config",  # the name for it, kept as `vary serve` keeps its old --config
        dest="catalogue",
        help="a TOML model catalogue; --model then names its models (local or hosted)",
    )
    parser.add_argument("--strength", help="comma-separated strengths, e.g. 1,0.5 (default 1)")
    parser.add_argument("-n", type=int, help="variations per input, 1 to 10 (default 4)")
    parser.add_argument("--size", choices=SIZES, help="output size (default 512x512)")
    parser.add_argument("--captions", help="captions: a COCO annotations JSON, a {file: caption} JSON, or TSV lines")
    parser.add_argument(
        "--scorer",
        help="the CLIP model that scores, by Hub id or path (default openai/clip-vit-large-patch14); "
        "tiny-random: a toy CLIP for smoke runs",
    )
    parser.add_argument("--out", default="vary-eval", help="the report folder (default ./vary-eval)")
    parser.add_argument("--limit", type=int, help="only the first N images of IMAGES_DIR (sorted by name)")
    parser.add_argument("--seed", type=int, default=0, help="input i is varied with seed + i (default 0)")
    parser.add_argument("--sheet", type=int, default=12, help="inputs shown on the contact sheet (default 12)")
    parser.add_argument("--device", help="torch device for the models and the scorer (default: cuda when present)")
    parser.add_argument(
        "--accept-license",
        nargs="+",
        metavar="LICENSE",
        help="licences accepted for the --model weights, e.g. flux-1-dev-non-commercial (VARY_ACCEPT_LICENSE)",
    )
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        help="ip-adapter: the IP-Adapter paper's protocol (COCO2017 val, 4 variations at strength 1, CLIP ViT-L/14) "
        "and its Table 1 beside the results",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from vary.ops.logs import configure_logging

    # Before the ML libraries load: their warnings in one format, and the notices that say nothing to a
    # vary user (transformers' "requires torchvision", about processors vary picks on purpose) left out.
    configure_logging("text", level="warning", progress_bars=not args.no_progress)
    try:
        return _run(args)
    except EvalError as exc:
        print(f"vary eval: {exc}", file=sys.stderr)
        return 2


class EvalError(Exception):
    pass


def _run(args: argparse.Namespace) -> int:
    options = _options(args)
    try:
        import matplotlib  # noqa: F401  (checked before minutes of generating, used by the report)
    except ImportError:
        raise EvalError("the report's plots need matplotlib: pip install 'vary[eval]'") from None
    if not args.models:
        raise EvalError("give at least one --model")
    if not 1 <= options["n"] <= 10:
        raise EvalError("-n must be between 1 and 10")

    from vary.evaluation.captions import CaptionsError, read_captions

    try:
        captions = read_captions(Path(args.captions)) if args.captions else {}
    except CaptionsError as exc:
        raise EvalError(str(exc)) from None
    sources = _sources(Path(args.images_dir), captions, args.limit)
    if args.protocol == "ip-adapter":
        _check_protocol(args, sources)

    from vary.errors import VaryError
    from vary.evaluation.metrics import mean
    from vary.evaluation.protocol import Row, table
    from vary.evaluation.report import About, write_report
    from vary.evaluation.run import Plan, evaluate
    from vary.evaluation.scorer import ClipScorer, ScorerUnavailable
    from vary.imaging import ImageDecoder
    from vary.service.runtime import running_services
    from vary.settings import Settings

    given = {"device": args.device, "accept_license": args.accept_license}
    settings = Settings(**{name: value for name, value in given.items() if value})
    decoder = ImageDecoder(settings.image_rules())
    registry, names = _models(args, settings, decoder)

    plan = Plan(tuple(names), options["strengths"], options["n"], options["size"], args.seed, args.sheet)
    out = Path(args.out)
    print(f"vary eval: loading {', '.join(names)} and the scorer {options['scorer']}", file=sys.stderr)
    try:
        scorer = ClipScorer.load(options["scorer"], device=args.device)
    except ScorerUnavailable as exc:
        raise EvalError(str(exc)) from None

    async def generate() -> Any:
        # The server's own start-up, on a scratch data dir: nothing of the user's (keys, usage, images) is touched.
        with tempfile.TemporaryDirectory(prefix="vary-eval-") as scratch:
            scratch_settings = settings.model_copy(
                update={"data_dir": Path(scratch), "database_url": None, "storage_url": None}
            )
            async with running_services(scratch_settings, decoder=decoder, registry=registry, warm_up=names) as run:
                return await evaluate(run.variations, sources, plan, scorer, out, progress=not args.no_progress)

    try:
        cells = asyncio.run(generate())
    except VaryError as exc:  # a model that cannot load
        raise EvalError(str(exc)) from None
    page = write_report(out, cells, sources, plan, About(args.images_dir, scorer.name, args.protocol))
    captioned = any(source.caption for source in sources)
    for cell in cells:
        figures = cell.summary(captions=captioned)
        shown = ", ".join(f"{k} {_shown(v)}" for k, v in figures.items() if k not in ("requests",))
        print(f"{cell.model} strength {cell.strength:g}: {shown}")
    if args.protocol == "ip-adapter":
        source = f"vary ({len(sources)} images x {plan.n})"
        ours = [Row(c.model, mean(c.clip_t), mean(c.fidelity), source) for c in cells if c.strength == 1]
        print()
        print(table(ours))
    print(f"report: {page.resolve()}", file=sys.stderr)
    return 1 if any(cell.images == 0 for cell in cells) else 0


def _models(args: argparse.Namespace, settings: Settings, decoder: ImageDecoder) -> tuple[ModelRegistry, list[str]]:
    """The models compared, built (not loaded) from --model names or a --catalogue, and their names."""
    from vary.errors import VaryError
    from vary.service.catalogue import Catalogue, CatalogueError, model_for_spec, read_catalogue
    from vary.service.runtime import build_registry

    try:
        if args.catalogue:
            catalogue = read_catalogue(Path(args.catalogue))
            names = list(dict.fromkeys(args.models))
        else:
            accepted = settings.accept_license
            configs = {spec: model_for_spec(spec, accepted) for spec in dict.fromkeys(args.models)}
            catalogue = Catalogue(tuple(configs.values()), default=next(iter(configs.values())).name)
            names = [config.name for config in configs.values()]
    except CatalogueError as exc:
        raise EvalError(str(exc)) from None
    registry = build_registry(settings, decoder, catalogue=catalogue)
    try:
        for name in names:
            registry.resolve(name)
    except VaryError as exc:
        raise EvalError(f"{exc}; the catalogue has: {', '.join(m.id for m in registry.models())}") from None
    return registry, names


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The run's settings: the flags, else the protocol's, else the defaults."""
    from vary.evaluation import protocol as paper
    from vary.evaluation.scorer import DEFAULT_SCORER

    defaults: dict[str, Any] = {"strengths": (1.0,), "n": 4, "size": 512, "scorer": DEFAULT_SCORER}
    if args.protocol == "ip-adapter":
        defaults = {"strengths": (paper.STRENGTH,), "n": paper.N, "size": paper.SIZE, "scorer": paper.SCORER}
    options = dict(defaults)
    if args.strength is not None:
        options["strengths"] = _strengths(args.strength)
    if args.n is not None:
        options["n"] = args.n
    if args.size is not None:
        options["size"] = int(args.size.split("x")[0])
    if args.scorer is not None:
        options["scorer"] = args.scorer
    if args.protocol:
        differ = [name for name in defaults if options[name] != defaults[name]]
        if differ:
            print(
                f"vary eval: warning: {', '.join(differ)} differ from the {args.protocol} protocol's; "
                "the figures are not comparable with the paper's",
                file=sys.stderr,
            )
    return options


def _strengths(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise EvalError(f"--strength: {text!r} is not a comma-separated list of numbers") from None
    if not values or not all(0 < value <= 1 for value in values):
        raise EvalError("--strength: each strength must be above 0 and at most 1")
    return tuple(dict.fromkeys(values))


def _sources(folder: Path, captions: dict[str, str], limit: int | None) -> list[Any]:
    from vary.cli.create import square_png
    from vary.evaluation.run import Source

    if not folder.is_dir():
        raise EvalError(f"{folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if limit is not None:
        files = files[: max(limit, 0)]
    if not files:
        raise EvalError(f"no images in {folder} ({', '.join(IMAGE_SUFFIXES)})")
    sources = []
    for path in files:
        try:
            png = square_png(path.read_bytes()).data
        except ValueError as exc:
            raise EvalError(f"{path}: {exc}") from None
        sources.append(Source(path.name, png, captions.get(path.name)))
    if captions and not any(source.caption for source in sources):
        raise EvalError("--captions names none of the images in the folder")
    return sources


def _check_protocol(args: argparse.Namespace, sources: list[Any]) -> None:
    from vary.evaluation import protocol as paper

    if not args.captions:
        raise EvalError("--protocol ip-adapter needs --captions: COCO's annotations/captions_val2017.json")
    if len(sources) != paper.IMAGES:
        print(
            f"vary eval: warning: the protocol has {paper.IMAGES} COCO val2017 images; "
            f"this folder gives {len(sources)}",
            file=sys.stderr,
        )


def _shown(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "-" if value is None else str(value)
