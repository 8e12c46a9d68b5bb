"""python -m rs_assistant.engine serve [--host 127.0.0.1] [--port 0] [--models FILE] [--token-file F] [--device auto|cpu|cuda|mps]
    [--data-root DIR ...] [--allow-remote]
python -m rs_assistant.engine run --task TASK --image PATH [--image PATH] [--extent XMIN,YMIN,XMAX,YMAX]
    [--crs EPSG:N] [--prompt TEXT] [--model NAME] [--models FILE] [--device auto|cpu|cuda|mps]
    [--data-root DIR ...] [--allow-remote]
python -m rs_assistant.engine batch --task TASK --image PATH [--image PATH] [--extent XMIN,YMIN,XMAX,YMAX] [--crs
EPSG:N]
    [--prompt TEXT] [--tile-size N] [--overlap N] [--batch-size N] [--top-k N] [--model NAME] [--models FILE]
    [--output FILE.geojsonl] [--ray-address ADDRESS [--workers N]] [--device auto|cpu|cuda|mps]
    [--data-root DIR ...] [--allow-remote]
python -m rs_assistant.engine selftest [--device auto|cpu|cuda|mps]
python -m rs_assistant.engine route "TEXT" [--images 1|2] [--history JSON] [--model NAME] [--models FILE]
python -m rs_assistant.engine models list|pull|import|export|use ...   (rs_assistant.engine.models_cli)

``serve`` binds its socket first (port 0: a free one), then prints exactly one line,
``READY http://HOST:PORT``, on stdout once it accepts requests; logs go to stderr. Every route but
``/v1/health`` needs the bearer token kept in --token-file (created with mode 0600 and a random
token if absent; default: the user's config folder, rs_assistant/engine.token).

``serve``, ``run`` and ``batch`` read rasters as rs_assistant.engine.sources says: local files only
(anywhere the user can read, or with --data-root DIR, repeatable, only inside those folders; a
path outside them gets the error of a missing file); URLs, GDAL virtual file systems (/vsicurl/,
...) and driver prefixes (GTIFF_DIR:, NETCDF:, ...) are refused (remote_source_refused) unless
--allow-remote is given.

``run`` answers one request without a server and prints the /v1/analyze response JSON on stdout.
Without --extent the whole raster is the region; without --crs the region is in the (first)
raster's CRS, which is also the output CRS. Negative coordinates work as they are written
(``--extent -81.99,29.69,-81.98,29.70`` and ``--extent=-81.99,...``). Bad input prints the error
JSON on stdout and exits 2; an engine fault exits 1.

``batch`` runs a whole-layer job (caption, ground, segment, change or retrieve) over the raster, or
the part of it in --extent (in --crs, default the raster's CRS; --crs is also the output CRS).
It prints the /v1/batch events as NDJSON on stdout, or, with --output, writes every final
feature (tile features, then the merged and ranked ones) to a GeoJSON-lines file and a progress
line to stderr. The file is written as ``FILE.partial`` and renamed to FILE only once the job is
done, so a stopped run (an error, Ctrl-C, a killed process) never leaves a file that looks
complete; beside it a journal (``FILE.rsa-journal.json``, rs_assistant.core.journal, the one the
Processing algorithms keep) records the finished tiles, and running the same command again
resumes: it keeps the features of the recorded tiles and does only the others. --ray-address
runs the tiles on a Ray cluster (rs_assistant.engine.distributed). Exit codes as for ``run``
(Ctrl-C: 130).

``selftest`` checks that the engine's packages import and says what it would compute on: one JSON
line, ``{"ok": true, "type", "name", "memory_gb", "dtype", "torch", "cuda", "warning"}`` (the
``device_info`` of /v1/health), exit 0. A missing package prints ``{"ok": false, "error": {"code":
"missing_package", "module": NAME, "message"}}`` and exits 1; a device that cannot be used (--device
cuda without a GPU) prints ``{"ok": false, "error": {...}}`` and exits 2. The settings dialog's Test
button runs it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

# The engine shares the CPU with QGIS: OpenMP threads that spin while waiting make torch tens of
# times slower when another process holds a core, so they sleep instead (set before torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from rs_assistant.core.protocol import (  # noqa: E402
    AnalyzeRequest,
    BatchEvent,
    BatchRequest,
    ErrorCode,
    ImageRef,
    Options,
    ProtocolError,
    validate_extent,
)

log = logging.getLogger("rs_assistant.engine")

EXIT_BAD_INPUT = 2
EXIT_ENGINE_FAULT = 1
EXIT_INTERRUPTED = 130
#: batch --output writes here first (FILE.partial), renamed to FILE when the job is done.
PARTIAL_SUFFIX = ".partial"
#: Options whose value may be a negative number or a list of numbers ("-81.99,29.69,-81.98,29.70").
NUMERIC_OPTIONS = ("--extent", "--port", "--tile-size", "--overlap", "--batch-size", "--top-k", "--workers", "--images")
_NEGATIVE_NUMBERS = re.compile(r"^-(\d|\.\d)[\d.eE+,\s-]*$")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(_negative_values(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO if args.command == "serve" else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "serve":
        return _serve(args)
    if args.command == "batch":
        return _batch(args)
    if args.command == "selftest":
        return _selftest(args)
    if args.command == "route":
        return _route(args)
    if args.command == "models":
        from rs_assistant.engine.models_cli import run as run_models

        return run_models(args)
    return _run(args)


def _negative_values(argv: Sequence[str]) -> list[str]:
    """``--extent -81.99,29.69,...`` as ``--extent=-81.99,29.69,...``: argparse takes a value that starts with "-"
    (and is not one plain number) for an option, and would say "expected one argument"."""
    out: list[str] = []
    args = list(argv)
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":  # what follows is positional
            out.extend(args[index:])
            break
        takes_number = arg in NUMERIC_OPTIONS or (len(arg) > 3 and "=" not in arg and "--extent".startswith(arg))
        if takes_number and index + 1 < len(args) and _NEGATIVE_NUMBERS.match(args[index + 1]):
            out.append(f"{arg}={args[index + 1]}")
            index += 2
            continue
        out.append(arg)
        index += 1
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rs_assistant.engine", description="The RS Assistant model engine.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="serve the HTTP API; prints READY http://HOST:PORT when it accepts requests"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this computer only)")
    serve.add_argument("--port", type=int, default=0, help="port to bind (default 0: a free port)")
    serve.add_argument("--token-file", type=Path, default=None, help="bearer token file, created (mode 0600) if absent")
    serve.add_argument(
        "--max-queue",
        type=int,
        default=None,
        help="requests waiting or being answered at once (batch jobs included); one more gets 429 (default 32)",
    )
    serve.add_argument("--ssl-certfile", type=Path, default=None, help="serve HTTPS with this certificate (PEM)")
    serve.add_argument("--ssl-keyfile", type=Path, default=None, help="the certificate's private key (PEM)")
    run = commands.add_parser("run", help="answer one request and print the /v1/analyze response JSON")
    _request_arguments(run, "caption, ground, segment, change, chat, classify or retrieve", "what to ask or find")
    batch = commands.add_parser("batch", help="run a task over a whole raster, tile by tile; prints NDJSON events")
    _request_arguments(batch, "caption, ground, segment, change or retrieve", "what to find, segment or search for")
    batch.add_argument(
        "--tile-size", type=int, default=512, help="tile side in pixels of the first raster (default 512)"
    )
    batch.add_argument(
        "--overlap",
        type=int,
        default=None,
        help="pixels shared by neighbouring tiles (default 64, at most a quarter tile)",
    )
    batch.add_argument(
        "--batch-size",
        type=int,
        default=0,
        help="tiles per model call (default 0: the model's own; 16 for the built-in model)",
    )
    batch.add_argument("--top-k", type=int, default=5, help="retrieve: how many tiles to rank (default 5)")
    batch.add_argument(
        "--output", type=Path, help="write the features to this GeoJSON-lines file instead of events to stdout"
    )
    batch.add_argument("--ray-address", help="run the tiles on this Ray cluster ('auto', 'ray://HOST:PORT')")
    batch.add_argument("--workers", type=int, default=None, help="with --ray-address: how many model workers")
    for sub in (serve, run, batch):
        sub.add_argument(
            "--models", type=Path, default=None, help="models file (TOML); without it only 'default' exists"
        )
        sub.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
        sub.add_argument(
            "--data-root",
            action="append",
            default=[],
            metavar="DIR",
            help="read rasters only inside this folder (repeatable; default: any file the user can read); "
            "a path outside gets the error of a missing file",
        )
        sub.add_argument(
            "--allow-remote",
            action="store_true",
            help="also read URLs, GDAL virtual file systems (/vsicurl/, ...) and driver prefixes (GTIFF_DIR:, ...); "
            "refused by default",
        )
    selftest = commands.add_parser(
        "selftest", help="check the engine's packages; print its device, torch and CUDA as one JSON line"
    )
    selftest.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    route = commands.add_parser(
        "route", help="which task a free-text request asks for; prints the /v1/route answer as JSON"
    )
    route.add_argument("text", help="the request as a person would type it")
    route.add_argument("--images", type=int, default=1, help="2 when a before and an after are chosen (default 1)")
    route.add_argument(
        "--history",
        default="[]",
        help='the conversation so far, JSON: [{"role": "user", "content": "/find cars"}, ...]',
    )
    route.add_argument("--model", default="auto", help="the model chosen (default auto); its class list is checked")
    route.add_argument("--models", type=Path, default=None, help="models file (TOML); without it only 'default' exists")
    from rs_assistant.engine.models_cli import add_parser as add_models_parser

    add_models_parser(commands)
    return parser


def _route(args: argparse.Namespace) -> int:
    """Prints the /v1/route answer; bad input prints the error JSON and exits 2. Loads no model."""
    from rs_assistant.core.protocol import RouteRequest
    from rs_assistant.engine.registry import Registry
    from rs_assistant.engine.router import classes_for, route

    try:
        history = json.loads(args.history)
        if not isinstance(history, list):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "--history must be a JSON list of {role, content} objects")
        request = RouteRequest.from_dict(
            {"prompt": args.text, "history": history, "images": args.images, "model": args.model}
        )
        result = route(request, classes_for(Registry.from_file(args.models), request.model))
    except ValueError as exc:
        print(ProtocolError(ErrorCode.BAD_REQUEST, f"--history is not JSON: {exc}").to_json())
        return EXIT_BAD_INPUT
    except ProtocolError as exc:
        print(exc.to_json())
        return EXIT_BAD_INPUT
    print(result.to_json())
    return 0


def _policy(args: argparse.Namespace):  # -> SourcePolicy; BAD_REQUEST for a --data-root that is not a folder
    from rs_assistant.engine.sources import SourcePolicy

    return SourcePolicy.of(args.data_root, allow_remote=args.allow_remote)


def _engine(args: argparse.Namespace, policy=None):  # -> Engine; imported here so that --help needs no torch
    from rs_assistant.engine.device import choose_device
    from rs_assistant.engine.registry import Registry
    from rs_assistant.engine.service import Engine

    policy = policy if policy is not None else _policy(args)
    device = choose_device(args.device)
    return Engine(Registry.from_file(args.models, device=device), sources=policy)


def _serve(args: argparse.Namespace) -> int:
    from rs_assistant.engine.server import (
        DEFAULT_MAX_QUEUE,
        Server,
        bind_socket,
        create_app,
        default_token_file,
        is_loopback,
        load_or_create_token,
        socket_url,
    )

    try:
        engine = _engine(args)
    except ProtocolError as exc:
        log.error("%s", exc.message)
        return EXIT_BAD_INPUT
    token_file = args.token_file or default_token_file()
    if (args.ssl_certfile is None) != (args.ssl_keyfile is None):
        log.error("cannot start: HTTPS needs both --ssl-certfile and --ssl-keyfile")
        return EXIT_BAD_INPUT
    try:
        token = load_or_create_token(token_file)
        sock = bind_socket(args.host, args.port)
    except ValueError as exc:  # a token too short to guess-proof
        log.error("cannot start: %s", exc)
        return EXIT_BAD_INPUT
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_ENGINE_FAULT
    tls = args.ssl_certfile is not None
    url = socket_url(sock, https=tls)
    if not tls and not is_loopback(args.host):
        log.warning(
            "the engine listens on %s without TLS: its token and your imagery cross the network in clear text. "
            "Serve it behind a reverse proxy with TLS, or give --ssl-certfile and --ssl-keyfile",
            args.host,
        )
    log.info("engine on %s (device %s), token in %s", url, engine.health().device, token_file)
    log.info("the engine %s", engine.sources.describe())

    def ready() -> None:
        print(f"READY {url}", flush=True)

    max_queue = args.max_queue if args.max_queue is not None else DEFAULT_MAX_QUEUE
    app = create_app(engine, token, max_queue=max_queue)
    Server(app, sock, on_ready=ready, ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile).run_on_socket()
    return 0


def _selftest(args: argparse.Namespace) -> int:
    try:
        # What `serve` imports (torch, fastapi, uvicorn, rasterio, shapely, pyproj, ...): a package
        # missing from the engine's environment shows here, not only when the engine starts.
        import rs_assistant.engine.server  # noqa: F401
        from rs_assistant.engine.device import choose_device, device_info
    except ImportError as exc:
        module = getattr(exc, "name", None) or ""
        error = {"code": "missing_package", "module": module, "message": f"{exc}; run the engine set-up again"}
        print(json.dumps({"ok": False, "error": error}), flush=True)
        return EXIT_ENGINE_FAULT
    try:
        info = device_info(choose_device(args.device))
    except ProtocolError as exc:
        print(json.dumps({"ok": False, **exc.to_dict()}), flush=True)
        return EXIT_BAD_INPUT
    print(json.dumps({"ok": True, **info.to_dict()}), flush=True)
    return 0


def _run(args: argparse.Namespace) -> int:
    try:
        policy = _policy(args)
        engine = _engine(args, policy)
        images = _images(args.image, args.extent, args.crs, policy)
        request = AnalyzeRequest(
            task=args.task, model=args.model, prompt=args.prompt, images=tuple(images), output_crs=images[0].crs
        )
        response = engine.analyze(request)
    except ProtocolError as exc:
        print(exc.to_json(), flush=True)
        return EXIT_BAD_INPUT if exc.http_status < 500 else EXIT_ENGINE_FAULT
    print(json.dumps(response.to_dict(), indent=2), flush=True)
    return 0


def _batch(args: argparse.Namespace) -> int:
    from rs_assistant.engine.batch import run_job

    executor = None
    try:
        policy = _policy(args)
        request = _batch_request(args, policy)
        executor = _ray_executor(args, policy) if args.ray_address else _engine(args, policy)
        if args.output is None:
            last = _print_events(run_job(executor, request))
        else:
            last = _write_output(executor, request, args.output)
    except ProtocolError as exc:
        last = {"event": BatchEvent.ERROR.value, **exc.to_dict()}
        if args.output is None:
            print(json.dumps(last), flush=True)
    except KeyboardInterrupt:
        if args.output is not None:
            print(f"\ninterrupted; run the same command again to resume ({_partial(args.output)})", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        close = getattr(executor, "close", None)
        if callable(close):
            close()
    if last.get("event") != BatchEvent.ERROR.value:
        return 0
    error = ProtocolError.from_dict(last)
    if args.output is not None:
        print(error.to_json(), flush=True)
    return EXIT_BAD_INPUT if error.http_status < 500 else EXIT_ENGINE_FAULT


def _batch_request(args: argparse.Namespace, policy) -> BatchRequest:
    crs = args.crs or _raster_region(args.image[0], None, policy)[1]
    return BatchRequest(
        task=args.task,
        sources=tuple(os.fspath(p) for p in args.image),
        output_crs=crs,
        model=args.model,
        prompt=args.prompt,
        extent=_parse_extent(args.extent) if args.extent else None,
        extent_crs=args.crs if args.extent else None,
        tile_size=args.tile_size,
        overlap=args.overlap if args.overlap is not None else min(64, args.tile_size // 4),
        batch_size=args.batch_size,
        options=Options(top_k=args.top_k),
    )


def _request_arguments(parser: argparse.ArgumentParser, tasks: str, prompt: str) -> None:
    """What ``run`` and ``batch`` both ask: the task, the raster(s), the region, the prompt and the model."""
    parser.add_argument("--task", required=True, help=tasks)
    parser.add_argument(
        "--image", action="append", required=True, help="a raster path; twice for change (before, after)"
    )
    parser.add_argument("--extent", help="XMIN,YMIN,XMAX,YMAX in --crs (default: the whole first raster)")
    parser.add_argument("--crs", help="CRS of --extent and of the output, e.g. EPSG:3857 (default: the first raster's)")
    parser.add_argument("--prompt", default="", help=prompt)
    parser.add_argument("--model", default="default", help="a model name from the models file (default: default)")


def _ray_executor(args: argparse.Namespace, policy):  # -> TileExecutor
    try:
        from rs_assistant.engine.distributed import make_ray_executor
    except ImportError as exc:
        raise ProtocolError(
            ErrorCode.NOT_IMPLEMENTED, f"--ray-address needs rs_assistant.engine.distributed and Ray installed ({exc})"
        ) from None
    # The device stays as asked ("auto" too): each worker resolves it on its own machine, so a
    # driver without a GPU does not force GPU workers onto their CPUs.
    return make_ray_executor(args.ray_address, args.models, args.device, args.workers, sources=policy)


def _print_events(events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Print each event as a JSON line; the last event."""
    last: dict[str, Any] = {}
    for event in events:
        last = event
        print(json.dumps(event), flush=True)
    return last


def _partial(output: str | os.PathLike[str]) -> Path:
    return Path(f"{os.fspath(output)}{PARTIAL_SUFFIX}")


def _write_output(runner, request: BatchRequest, output: Path) -> dict[str, Any]:
    """Run the job into ``output`` (GeoJSON lines), resumable: the last event.

    The features go to ``output``.partial, renamed to ``output`` once the job is done; the journal beside
    ``output`` records each finished tile (its feature count and seam pieces) after its features are in the
    file. A journal of this very job resumes it: the recorded tiles' features are kept and skipped.
    """
    from rs_assistant.core.journal import Journal
    from rs_assistant.engine.batch import plan_job, stream_job

    partial, journal_path = _partial(output), Journal.path_for(output)
    journal = Journal.open(journal_path, request.to_dict())
    kept: list[str] = []
    if journal is not None:
        kept = _kept_lines(partial, journal)
        request = replace(request, skip_tiles=journal.skip_tiles(), pending=journal.pending())
    plan = plan_job(runner, request)  # a bad job is refused before any file is written
    if journal is not None:
        print(
            f"resuming: {len(journal.tiles)} tile(s) and {len(kept)} feature(s) kept from the earlier run",
            file=sys.stderr,
            flush=True,
        )
    last: dict[str, Any] = {}
    try:
        journal = journal or Journal.create(journal_path, request.to_dict())
        sink = partial.open("w", encoding="utf-8")
    except OSError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"cannot write the output beside {output}: {exc}") from None
    with sink:
        sink.writelines(line + "\n" for line in kept)
        sink.flush()
        for event in stream_job(runner, plan):
            last = event
            features = event.get("features") if isinstance(event.get("features"), list) else []
            sink.writelines(json.dumps(feature) + "\n" for feature in features)
            if event["event"] == BatchEvent.TILE.value:
                sink.flush()  # in the file before the journal says so
                journal.record_tile(int(event["tile"]), len(features), list(event.get("pending") or []))
                print(f"\rtile {event['done']}/{event['todo']}", end="", file=sys.stderr, flush=True)
    if last.get("event") != BatchEvent.DONE.value:
        print(
            f"\nstopped; the {journal.written()} feature(s) of {len(journal.tiles)} finished tile(s) are kept in "
            f"{partial}: run the same command again to resume",
            file=sys.stderr,
            flush=True,
        )
        return last
    os.replace(partial, output)
    journal.remove()
    print(f"\n{last['features'] + len(kept)} feature(s) written to {output}", file=sys.stderr, flush=True)
    return last


def _kept_lines(partial: Path, journal) -> list[str]:
    """The lines of an earlier run's ``partial`` file that hold the features of the tiles ``journal`` records in
    full; the journal forgets the other tiles (done again).

    The file starts with the recorded tiles' features, in the order the journal recorded them (a tile is
    recorded only once its features are in the file); what follows (a tile cut short, a merge) is dropped.
    """
    try:
        with partial.open(encoding="utf-8") as stream:
            head = [line.rstrip("\n") for _, line in zip(range(journal.written()), stream)]
    except FileNotFoundError:
        head = []
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("cannot read the earlier run's %s (%s): starting its tiles again", partial, exc)
        head = []
    lines: list[tuple[str, int | None]] = []
    for line in head:
        try:
            properties = json.loads(line).get("properties") or {}
        except (ValueError, AttributeError):
            break
        tile = properties.get("tile")
        lines.append((line, tile if isinstance(tile, int) else None))
    intact = journal.keep_intact(Counter(tile for _, tile in lines if tile is not None))
    return [line for line, tile in lines if tile in intact]


def _images(paths: Sequence[str], extent_arg: str | None, crs: str | None, policy) -> list[ImageRef]:
    """One ImageRef per path, all over the same region: --extent/--crs, else the first raster's bounds and CRS."""
    if extent_arg is not None:
        extent = _parse_extent(extent_arg)
        crs = crs or _raster_region(paths[0], None, policy)[1]
    else:
        extent, crs = _raster_region(paths[0], crs, policy)
    return [ImageRef(extent=extent, crs=crs, source=os.fspath(path)) for path in paths]


def _parse_extent(text: str) -> tuple[float, float, float, float]:
    parts = text.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ProtocolError(
            ErrorCode.BAD_EXTENT, f"--extent must be XMIN,YMIN,XMAX,YMAX numbers, got {text!r}"
        ) from None
    return validate_extent(values)


def _raster_region(path: str, crs: str | None, policy) -> tuple[tuple[float, float, float, float], str]:
    """The raster's bounds and CRS string (its source checked against ``policy``); its bounds in ``crs`` when given."""
    import rasterio.warp

    from rs_assistant.engine.crs import parse_crs
    from rs_assistant.engine.imagery import describe_raster

    info = describe_raster(os.fspath(path), policy)
    if crs is None:
        return info.bounds, info.crs
    own, target = parse_crs(info.crs), parse_crs(crs)
    return tuple(rasterio.warp.transform_bounds(own.to_wkt(), target.to_wkt(), *info.bounds, densify_pts=21)), crs


if __name__ == "__main__":
    sys.exit(main())
