"""python -m rs_assistant.engine serve [--host 127.0.0.1] [--port 0] [--models FILE] [--token-file F] [--device auto|cpu|cuda|mps]
python -m rs_assistant.engine run --task TASK --image PATH [--image PATH] [--extent XMIN,YMIN,XMAX,YMAX]
    [--crs EPSG:N] [--prompt TEXT] [--model NAME] [--models FILE] [--device auto|cpu|cuda|mps]
python -m rs_assistant.engine batch --task TASK --image PATH [--image PATH] [--extent XMIN,YMIN,XMAX,YMAX] [--crs
EPSG:N]
    [--prompt TEXT] [--tile-size N] [--overlap N] [--batch-size N] [--top-k N] [--model NAME] [--models FILE]
    [--output FILE.geojsonl] [--ray-address ADDRESS [--workers N]] [--device auto|cpu|cuda|mps]
python -m rs_assistant.engine selftest [--device auto|cpu|cuda|mps]
python -m rs_assistant.engine route "TEXT" [--images 1|2] [--history JSON] [--model NAME] [--models FILE]
python -m rs_assistant.engine models list|pull|import|export|use ...   (rs_assistant.engine.models_cli)

``serve`` binds its socket first (port 0: a free one), then prints exactly one line,
``READY http://HOST:PORT``, on stdout once it accepts requests; logs go to stderr. Every route but
``/v1/health`` needs the bearer token kept in --token-file (created with mode 0600 and a random
token if absent; default: the user's config folder, rs_assistant/engine.token).

``run`` answers one request without a server and prints the /v1/analyze response JSON on stdout.
Without --extent the whole raster is the region; without --crs the region is in the (first)
raster's CRS, which is also the output CRS. Bad input prints the error JSON on stdout and exits 2;
an engine fault exits 1.

``batch`` runs a whole-layer job (caption, ground, segment, change or retrieve) over the raster, or
the part of it in --extent (in --crs, default the raster's CRS; --crs is also the output CRS).
It prints the /v1/batch events as NDJSON on stdout, or, with --output, writes every final
feature (tile features, then the merged and ranked ones) to a GeoJSON-lines file and a progress
line to stderr. --ray-address runs the tiles on a Ray cluster (rs_assistant.engine.distributed).
Exit codes as for ``run``.

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
import sys
from collections.abc import Sequence
from pathlib import Path

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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rs_assistant.engine", description="The RS Assistant model engine.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="serve the HTTP API; prints READY http://HOST:PORT when it accepts requests"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this computer only)")
    serve.add_argument("--port", type=int, default=0, help="port to bind (default 0: a free port)")
    serve.add_argument("--token-file", type=Path, default=None, help="bearer token file, created (mode 0600) if absent")
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


def _engine(args: argparse.Namespace):  # -> Engine; imported here so that --help needs no torch
    from rs_assistant.engine.device import choose_device
    from rs_assistant.engine.registry import Registry
    from rs_assistant.engine.service import Engine

    device = choose_device(args.device)
    return Engine(Registry.from_file(args.models, device=device))


def _serve(args: argparse.Namespace) -> int:
    from rs_assistant.engine.server import (
        Server,
        bind_socket,
        create_app,
        default_token_file,
        load_or_create_token,
        socket_url,
    )

    try:
        engine = _engine(args)
    except ProtocolError as exc:
        log.error("%s", exc.message)
        return EXIT_BAD_INPUT
    token_file = args.token_file or default_token_file()
    try:
        token = load_or_create_token(token_file)
        sock = bind_socket(args.host, args.port)
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_ENGINE_FAULT
    url = socket_url(sock)
    log.info("engine on %s (device %s), token in %s", url, engine.health().device, token_file)

    def ready() -> None:
        print(f"READY {url}", flush=True)

    Server(create_app(engine, token), sock, on_ready=ready).run_on_socket()
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
        engine = _engine(args)
        images = _images(args.image, args.extent, args.crs)
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
        request = _batch_request(args)
        executor = _ray_executor(args) if args.ray_address else _engine(args)
        events = run_job(executor, request)
        last = _write_events(events, args.output)
    except ProtocolError as exc:
        last = {"event": BatchEvent.ERROR.value, **exc.to_dict()}
        if args.output is None:
            print(json.dumps(last), flush=True)
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


def _batch_request(args: argparse.Namespace) -> BatchRequest:
    crs = args.crs or _raster_region(args.image[0], None)[1]
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


def _ray_executor(args: argparse.Namespace):  # -> TileExecutor
    try:
        from rs_assistant.engine.distributed import make_ray_executor
    except ImportError as exc:
        raise ProtocolError(
            ErrorCode.NOT_IMPLEMENTED, f"--ray-address needs rs_assistant.engine.distributed and Ray installed ({exc})"
        ) from None
    # The device stays as asked ("auto" too): each worker resolves it on its own machine, so a
    # driver without a GPU does not force GPU workers onto their CPUs.
    return make_ray_executor(args.ray_address, args.models, args.device, args.workers)


def _write_events(events, output: Path | None) -> dict:
    """Print each event as a JSON line, or write the features to ``output`` with progress on stderr; the last event."""
    last: dict = {}
    sink = output.open("w", encoding="utf-8") if output is not None else None
    try:
        for event in events:
            last = event
            if sink is None:
                print(json.dumps(event), flush=True)
                continue
            for feature in event.get("features", []) if isinstance(event.get("features"), list) else []:
                sink.write(json.dumps(feature) + "\n")
            if event["event"] == BatchEvent.TILE.value:
                print(f"\rtile {event['done']}/{event['todo']}", end="", file=sys.stderr, flush=True)
            elif event["event"] == BatchEvent.DONE.value:
                print(f"\n{event['features']} feature(s) written to {output}", file=sys.stderr, flush=True)
    finally:
        if sink is not None:
            sink.close()
    return last


def _images(paths: Sequence[str], extent_arg: str | None, crs: str | None) -> list[ImageRef]:
    """One ImageRef per path, all over the same region: --extent/--crs, else the first raster's bounds and CRS."""
    if extent_arg is not None:
        extent = _parse_extent(extent_arg)
        crs = crs or _raster_region(paths[0], None)[1]
    else:
        extent, crs = _raster_region(paths[0], crs)
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


def _raster_region(path: str, crs: str | None) -> tuple[tuple[float, float, float, float], str]:
    """The raster's bounds and CRS string; its bounds in ``crs`` when given."""
    import rasterio
    import rasterio.errors
    import rasterio.warp

    from rs_assistant.engine.crs import parse_crs

    if not os.path.exists(path):
        raise ProtocolError(ErrorCode.SOURCE_NOT_FOUND, f"source {path!r} does not exist")
    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise ProtocolError(ErrorCode.UNREADABLE_SOURCE, f"{path!r} has no CRS; give --extent and --crs")
            bounds, own_crs = tuple(src.bounds), src.crs
    except rasterio.errors.RasterioError as exc:
        raise ProtocolError(ErrorCode.UNREADABLE_SOURCE, f"cannot read {path!r} as a raster: {exc}") from None
    if crs is None:
        return bounds, own_crs.to_string()
    target = parse_crs(crs)
    return tuple(rasterio.warp.transform_bounds(own_crs, target.to_wkt(), *bounds, densify_pts=21)), crs


if __name__ == "__main__":
    sys.exit(main())
