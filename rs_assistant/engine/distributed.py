"""Batch jobs over a Ray cluster: the tiles of one job spread over worker processes, one model load per worker.

    executor = make_ray_executor("local", models_file="models.toml", device="auto", workers=4)
    try:
        for event in run_job(executor, request, cancel):
            ...
    finally:
        executor.close()

or from the command line: ``python -m rs_assistant.engine batch ... --ray-address ADDRESS``.

``address`` is ``"local"`` (start a Ray instance on this machine, stopped again by ``close()``),
``"auto"`` (join the cluster that ``ray start --head`` started on this machine) or the address of
a cluster's head (``HOST:6379``, or ``ray://HOST:10001`` for Ray Client). When this process
already called ``ray.init``, that session is used as it is.

Each worker is a Ray actor that builds its own :class:`~rs_assistant.engine.service.Engine` from
the models file once, so each loads a model at most once however many tiles it runs. The driver
(the process that runs the job: the CLI, or a server) makes the grid, hands batches of tiles
to idle workers (two in flight per worker, so that none waits for the driver) and merges the
results as they come back (``ray.wait``), in whatever order; the seams and the ranking are
merged by the batch runner exactly as for a local job, so the result is the same.

What every machine of the cluster needs, at the same paths as on the driver: this repository
(the workers find ``rs_assistant`` through PYTHONPATH, set for them to the driver's copy), a
Python with the engine's packages and the same ``ray`` version (requirements/constraints.txt),
the models file and every checkpoint folder it names, and the rasters of the job (a shared file
system such as NFS, or copies at the same paths). Nothing is uploaded: a worker reads the tiles
it runs from the raster itself, and only tile ids and results travel. The workers get the
driver's RS_ASSISTANT_CACHE_DIR (search embeddings), GDAL_CACHEMAX and offline switches when set.

Cancelling (the job's ``cancel`` event) stops handing out batches, tells the busy workers (each
checks between the tiles' model calls) and raises CANCELLED. A worker that dies (its process
killed, its machine lost) ends the job with INTERNAL naming the tiles it was running; a rerun
with ``skip_tiles`` and ``pending`` (what was streamed) resumes the job.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rs_assistant.core.protocol import BatchRequest, ErrorCode, ProtocolError
from rs_assistant.engine.batch import TileExecutor, TileOutput, TileWork, run_tiles
from rs_assistant.engine.sources import SourcePolicy

log = logging.getLogger(__name__)

#: Batches handed to one worker before it answers: one running, one queued behind it.
IN_FLIGHT_PER_WORKER = 2
#: How often the driver checks the job's cancel event while it waits for workers.
WAIT_POLL_S = 0.1
#: How long the executor waits for its workers to start (a cluster without room for them never starts them).
START_TIMEOUT_S = 300.0
#: How long a cancelled job waits for its busy workers to stop.
CLOSE_WAIT_S = 10.0
INSTALL_HINT = (
    "batch jobs on a Ray cluster need the 'ray' package: run 'make setup' (it installs requirements/distributed.in) "
    "or '.venv/bin/pip install -c requirements/constraints.txt -r requirements/distributed.in'"
)
#: The folder that holds the rs_assistant package: the workers' PYTHONPATH.
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def import_ray() -> Any:
    """The ``ray`` module, or NOT_IMPLEMENTED saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ProtocolError(ErrorCode.NOT_IMPLEMENTED, INSTALL_HINT) from None
    return ray


class TileWorker:
    """The state of one Ray actor: an Engine built once from the models file, answering batches of tiles.

    Ray runs ``run`` one batch at a time (the actor's default concurrency group) and ``check``,
    ``cancel``, ``forget`` and ``info`` beside it (the "control" group), so that a job can be
    stopped mid-batch. Answers are ``("ok", value)`` or ``("error", {code, message})``: errors
    travel as values, so the driver raises the same ProtocolError a local job would. A models
    file that does not parse is reported the same way, by every call, instead of killing the actor.
    """

    def __init__(self, models_file: str | None, device: str, sources: SourcePolicy | None = None):
        from rs_assistant.engine.device import choose_device
        from rs_assistant.engine.registry import Registry
        from rs_assistant.engine.service import Engine

        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.engine: Engine | None = None
        self.failure: ProtocolError | None = None
        try:
            self.engine = Engine(Registry.from_file(models_file, device=choose_device(device)), sources=sources)
        except ProtocolError as exc:
            self.failure = exc
        self._cancels: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self.batches = 0
        self.tiles = 0

    def run(self, job: str, request: BatchRequest, works: list[TileWork]) -> tuple[str, Any]:
        cancel = self._event(job)

        def answer() -> list[TileOutput]:
            if cancel.is_set():
                raise ProtocolError(ErrorCode.CANCELLED, "the batch job was cancelled")
            outputs = run_tiles(self._engine(), request, works, cancel)
            self.batches += 1
            self.tiles += len(works)
            return outputs

        return self._answer(f"tiles {_tile_ids(works)} of job {job}", answer)

    def check(self, request: BatchRequest) -> tuple[str, Any]:
        """Whether this worker's models can run the job (UNKNOWN_MODEL, UNSUPPORTED_TASK)."""
        return self._answer("checking a job", lambda: self._engine().check_batch(request))

    def cancel(self, job: str) -> None:
        self._event(job).set()

    def forget(self, job: str) -> None:
        with self._lock:
            self._cancels.pop(job, None)

    def info(self) -> dict[str, Any]:
        """This worker's process, device and counts, and which models it has loaded."""
        engine = self.engine
        loaded = [m.name for m in engine.models() if m.loaded] if engine is not None else []
        return {"pid": os.getpid(), "node": _node_ip(), "device": engine.registry.device if engine else None,
                "loaded": loaded, "batches": self.batches, "tiles": self.tiles}  # fmt: skip

    def _engine(self) -> Any:
        if self.engine is None:
            assert self.failure is not None
            raise self.failure
        return self.engine

    def _event(self, job: str) -> threading.Event:
        with self._lock:
            return self._cancels.setdefault(job, threading.Event())

    @staticmethod
    def _answer(what: str, compute: Any) -> tuple[str, Any]:
        try:
            return "ok", compute()
        except ProtocolError as exc:
            return "error", exc.to_dict()["error"]
        except Exception as exc:  # an engine bug: the details stay in this worker's log
            log.exception("a Ray worker failed on %s", what)
            error = ProtocolError(
                ErrorCode.INTERNAL, f"a Ray worker failed on {what} ({type(exc).__name__}); its log has the details"
            )
            return "error", error.to_dict()["error"]


def _node_ip() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - informative only
        return "?"


@functools.cache
def _actor_class() -> Any:
    """TileWorker as a Ray actor class: ``run`` one at a time, ``cancel``/``forget``/``info`` beside it."""
    ray = import_ray()

    class RayTileWorker(TileWorker):
        @ray.method(concurrency_group="control")
        def cancel(self, job: str) -> None:
            super().cancel(job)

        @ray.method(concurrency_group="control")
        def forget(self, job: str) -> None:
            super().forget(job)

        @ray.method(concurrency_group="control")
        def info(self) -> dict[str, Any]:
            return super().info()

        @ray.method(concurrency_group="control")
        def check(self, request: BatchRequest) -> tuple[str, Any]:
            return super().check(request)

    return ray.remote(concurrency_groups={"control": 1})(RayTileWorker)


class RayExecutor(TileExecutor):
    """Runs batches of tiles on ``workers`` Ray actors (see the module's docstring)."""

    def __init__(self, models_file: str | os.PathLike[str] | None, device: str = "auto", workers: int | None = None,
                 owns_ray: bool = False, start_timeout_s: float = START_TIMEOUT_S,
                 sources: SourcePolicy | None = None):  # fmt: skip
        ray = import_ray()
        if not ray.is_initialized():
            raise ProtocolError(ErrorCode.INTERNAL, "RayExecutor needs ray.init() first (make_ray_executor does it)")
        self._ray = ray
        self._owns_ray = owns_ray
        self._actors: list[Any] = []
        self._closed = False
        self.sources = sources if sources is not None else SourcePolicy()  # where the job's rasters may be
        self.models_file = None if models_file is None else str(Path(models_file).expanduser().resolve())
        resources = ray.cluster_resources()
        cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
        use_gpu = gpus > 0 and (device or "auto").lower().split(":")[0] in ("auto", "cuda")
        if workers is None:
            workers = int(gpus) if use_gpu else max(1, int(cpus))
        if workers < 1:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"a Ray job needs at least one worker, got {workers}")
        self.workers = workers
        # one CPU per worker (torch then runs one thread: Ray sets OMP_NUM_THREADS), a GPU or a share of one
        need = {"CPU": 1.0, "GPU": min(1.0, gpus / workers) if use_gpu else 0.0}
        options: dict[str, Any] = {"num_cpus": need["CPU"], "num_gpus": need["GPU"], "max_restarts": 0,
                                   "runtime_env": {"env_vars": _worker_env()}}  # fmt: skip
        log.info("starting %d Ray worker(s) (models %s, device %s; cluster: %g CPU, %g GPU)",
                 workers, self.models_file or "built in", device, cpus, gpus)  # fmt: skip
        actor_class = _actor_class().options(**options)
        self._actors = [actor_class.remote(self.models_file, device, self.sources) for _ in range(workers)]
        try:
            self._wait_started(start_timeout_s, need, cpus, gpus)
        except BaseException:
            self.close()
            raise

    def _wait_started(self, timeout_s: float, need: dict[str, float], cpus: float, gpus: float) -> None:
        """Wait until every worker answers; TIMEOUT when the cluster cannot place them all, INTERNAL when one fails
        to start."""
        ray = self._ray
        refs = [actor.info.remote() for actor in self._actors]
        ready, waiting = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        if waiting:
            asked = f"{need['CPU']:g} CPU" + (f" and {need['GPU']:g} GPU" if need["GPU"] else "")
            raise ProtocolError(
                ErrorCode.TIMEOUT,
                f"only {len(ready)} of {len(refs)} Ray worker(s) started within {timeout_s:g} s: each asks for "
                f"{asked} and "
                f"the cluster has {cpus:g} CPU and {gpus:g} GPU in all (other jobs may hold some); ask for fewer "
                f"workers",
            )
        for ref in ready:
            try:
                ray.get(ref)
            except ray.exceptions.RayError as exc:
                log.error("a Ray worker failed to start: %s", exc)
                raise ProtocolError(
                    ErrorCode.INTERNAL,
                    f"a Ray worker failed to start ({type(exc).__name__}): every node needs this repository at "
                    f"{PACKAGE_ROOT} "
                    "and a Python with the engine's packages; the Ray worker logs have the details",
                ) from None

    def check(self, request: BatchRequest) -> int:
        """UNKNOWN_MODEL / UNSUPPORTED_TASK before the job starts, as the first worker sees its models; the job's
        batch size."""
        return int(
            self._get(self._actors[0].check.remote(request), "checking the job (starting: see the Ray worker logs)")
        )

    def map(
        self, request: BatchRequest, batches: Iterable[list[TileWork]], cancel: threading.Event
    ) -> Iterator[list[TileOutput]]:
        """Each batch's outputs as a worker finishes it (in any order); CANCELLED once ``cancel`` is set."""
        ray = self._ray
        job = uuid.uuid4().hex[:12]
        request_ref = ray.put(request)
        todo = iter(batches)
        exhausted = False
        running: dict[Any, tuple[int, list[TileWork]]] = {}  # result ref -> (worker index, its tiles)
        load = {index: 0 for index in range(len(self._actors))}
        try:
            while True:
                while not exhausted and not cancel.is_set():
                    index = min(load, key=load.get)
                    if load[index] >= IN_FLIGHT_PER_WORKER:
                        break
                    works = next(todo, None)
                    if works is None:
                        exhausted = True
                        break
                    if not works:
                        continue
                    actor = self._actors[index]
                    running[actor.run.remote(job, request_ref, works)] = (index, works)
                    load[index] += 1
                if cancel.is_set():
                    self._cancel(job, running)
                    raise ProtocolError(ErrorCode.CANCELLED, "the job was cancelled")
                if not running:
                    return
                ready, _ = ray.wait(list(running), num_returns=1, timeout=WAIT_POLL_S)
                for ref in ready:
                    index, works = running.pop(ref)
                    load[index] -= 1
                    yield self._get(ref, f"processing tiles {_tile_ids(works)}")
        finally:
            if running:  # the job stopped early (an error, cancel, or the caller closed the generator)
                self._cancel(job, running)
            for actor in self._actors:
                actor.forget.remote(job)

    def infos(self) -> list[dict[str, Any]]:
        """What each worker reports: pid, node, device, loaded models, batches and tiles run."""
        return self._ray.get([actor.info.remote() for actor in self._actors])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for actor in self._actors:
            try:
                self._ray.kill(actor)
            except Exception:  # noqa: BLE001 - the actor may be gone already
                log.debug("killing a Ray worker failed", exc_info=True)
        self._actors = []
        if self._owns_ray and self._ray.is_initialized():
            self._ray.shutdown()

    # --- helpers ---------------------------------------------------------------------------------

    def _get(self, ref: Any, what: str) -> Any:
        """The value a worker answered; its error, a dead worker or a Ray failure as a ProtocolError."""
        ray = self._ray
        try:
            status, value = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            raise ProtocolError(
                ErrorCode.INTERNAL,
                f"a Ray worker died while {what} ({type(exc).__name__}); "
                "rerun the job with skip_tiles and pending to resume it",
            ) from None
        except ray.exceptions.RayError as exc:
            log.error("Ray failed while %s: %s", what, exc)
            raise ProtocolError(ErrorCode.INTERNAL, f"Ray failed while {what} ({type(exc).__name__})") from None
        if status != "ok":
            raise ProtocolError(value.get("code", ErrorCode.INTERNAL), str(value.get("message", "")))
        return value

    def _cancel(self, job: str, running: dict[Any, tuple[int, list[TileWork]]]) -> None:
        """Tell the busy workers to stop the job's batches, and wait (a little) for them to return."""
        ray = self._ray
        busy = {index for index, _ in running.values()}
        for index in busy:
            self._actors[index].cancel.remote(job)
        refs = list(running)
        running.clear()
        try:
            ray.wait(refs, num_returns=len(refs), timeout=CLOSE_WAIT_S)
        except Exception:  # noqa: BLE001 - a dead worker: nothing left to wait for
            log.debug("waiting for cancelled batches failed", exc_info=True)


def make_ray_executor(address: str | None, models_file: str | os.PathLike[str] | None = None, device: str = "auto",
                      workers: int | None = None, start_timeout_s: float = START_TIMEOUT_S,
                      sources: SourcePolicy | None = None) -> RayExecutor:  # fmt: skip
    """A RayExecutor on the cluster at ``address`` ("local", "auto", "HOST:PORT", "ray://HOST:PORT"), its workers
    reading only the rasters that ``sources`` allows (default: local files).

    Starts Ray (``ray.init``) unless this process already did; ``close()`` stops what it started.
    """
    ray = import_ray()
    owns = False
    if not ray.is_initialized():
        init: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                                "runtime_env": {"env_vars": _worker_env()}}  # fmt: skip
        address = (address or "local").strip()
        if address == "local":
            init["num_cpus"] = workers or os.cpu_count() or 1
        try:
            ray.init(address=address, **init)
        except ConnectionError as exc:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"cannot reach the Ray cluster at {address!r}: {exc}") from None
        except (ValueError, RuntimeError) as exc:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"cannot start or join Ray at {address!r}: {exc}") from None
        owns = True
    try:
        return RayExecutor(
            models_file, device, workers, owns_ray=owns, start_timeout_s=start_timeout_s, sources=sources
        )
    except BaseException:
        if owns:
            ray.shutdown()
        raise


#: Variables of the driver's environment that the workers get too (when set).
FORWARDED_ENV = ("RS_ASSISTANT_CACHE_DIR", "GDAL_CACHEMAX", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def _worker_env() -> dict[str, str]:
    """Environment of the workers: this repository first on PYTHONPATH, the engine's OpenMP setting, FORWARDED_ENV."""
    path = [PACKAGE_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != PACKAGE_ROOT]
    env = {"PYTHONPATH": os.pathsep.join(path), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    env.update({name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)})
    return env


def _tile_ids(works: list[TileWork]) -> str:
    ids = [str(w.id) for w in works]
    return ", ".join(ids[:8]) + (f" and {len(ids) - 8} more" if len(ids) > 8 else "")
