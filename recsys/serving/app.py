"""The HTTP recommendation service: FastAPI over a loaded :class:`~recsys.api.run.Run`.

``create_app(run, api_key=...)`` builds the app; ``python -m recsys.serve`` runs it under
uvicorn. Every request is resolved on its own first (a bad one fails alone, with its own
message), then scored through a :class:`~recsys.serving.batching.MicroBatcher`, so concurrent
requests share one forward pass (one beam search, for a generative run). A reload loads the
next run in a worker thread and swaps the whole (run, batcher) pair in one assignment; the old
batcher drains, so no request in flight fails. Errors are ``{"detail": "<one line>", ...}``,
never a traceback.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Body, FastAPI, HTTPException, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from loguru import logger
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recsys.api.run import NotFound, Query as RunQuery, Resolved, Run, Unsupported
from recsys.api.loading import load_run
from recsys.cli import RecsysError
from recsys.serving.batching import MAX_BATCH, MicroBatcher
from recsys.serving.telemetry import Metrics

#: The most recommendations or similar items one request may ask for.
MAX_K = 100
#: The largest request body accepted (a history of a few thousand ids fits).
MAX_BODY_BYTES = 64 * 1024
#: The longest history by titles (each title is fuzzy-matched on the event loop).
MAX_TITLES = 100
#: The most autocomplete suggestions per search.
MAX_SEARCH = 50
API_KEY_ENV = "RECSYS_API_KEY"
API_KEY_HEADER = "X-API-Key"
STATIC = resources.files("recsys.serving").joinpath("static")


# ------------------------------------------------------------------------------------ schemas


def _id_text(value: Any) -> Any:
    """Ids are strings; a JSON client may send ``50`` for ``"50"``."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Id = Annotated[str, BeforeValidator(_id_text), Field(min_length=1, max_length=200)]


class RecommendRequest(BaseModel):
    """Whom to recommend for (exactly one of user_id, items, titles) and how."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"user_id": "1", "k": 10}, {"items": ["50", "181"]}]},
    )

    user_id: Id | None = Field(None, description="An original user id of the dataset.")
    items: list[Id] | None = Field(None, description="A history by original item ids.")
    titles: list[Annotated[str, Field(min_length=1, max_length=300)]] | None = Field(
        None, max_length=MAX_TITLES, description="A history by titles (matched fuzzily)."
    )
    k: int = Field(10, ge=1, le=MAX_K, description="How many items to return.")
    exclude_seen: bool = Field(True, description="Leave out the items of the history.")
    exclude_items: list[Id] = Field([], description="Original item ids never to return.")
    categories: list[str] | None = Field(
        None, description="Only items in one of these genres or product groups."
    )

    def query(self) -> RunQuery:
        return RunQuery(
            self.user_id,
            self.items,
            self.titles,
            self.k,
            self.exclude_seen,
            self.exclude_items,
            self.categories,
        )


class Item(BaseModel):
    """An item as the catalogue shows it: original id, title and the dataset's text fields."""

    model_config = ConfigDict(extra="allow")

    item_id: Id
    title: str | None


class ScoredItem(Item):
    rank: int
    score: float = Field(
        description="The model's score: a logit, a generative run's log-probability, or a "
        "cosine for similar."
    )


class Answer(BaseModel):
    """Ranked items and what answered: the run, its model and how it represents items."""

    run: str
    model: str
    item_repr: str
    items: list[ScoredItem]


class Suggestions(BaseModel):
    query: str
    items: list[Item]


class NewItem(BaseModel):
    """An item to add: a new original id, its title and any of the dataset's text fields."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [{"item_id": "new-1", "title": "A New Film (2026)", "genres": "Drama"}]
        },
    )
    __pydantic_extra__: dict[str, str | int | float | bool | None]

    item_id: Id
    title: Annotated[str, Field(min_length=1, max_length=500)]


class NewItems(BaseModel):
    items: list[NewItem] = Field(min_length=1, max_length=1000)


class Added(BaseModel):
    run: str
    added: list[str]
    n_items: int


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run: str | None = Field(
        None, description="A run folder on the server; default: what the service started with."
    )


class Reloaded(BaseModel):
    run: str
    model: str
    item_repr: str
    previous: str
    seconds: float


class ErrorBody(BaseModel):
    detail: str
    nearest: list[str] | None = None


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (404, 409, 413, 422, 500)
}
KEYED: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (401, 403)}


# -------------------------------------------------------------------------------------- state


def run_loader(
    dataset: str,
    run: Path | str | None = None,
    *,
    processed_dir: Path | None = None,
    models_dir: Path | None = None,
    device: str = "cpu",
) -> Callable[[str | None], Run]:
    """How the service loads a run: the folder a reload names, else ``run``, else the dataset's
    best run at that moment (so a reload picks up a better run trained meanwhile)."""

    def load(path: str | None = None) -> Run:
        return load_run(
            path or run,
            dataset,
            processed_dir=processed_dir,
            models_dir=models_dir,
            device=device,
        )

    return load


def settle_memory() -> None:
    """Move what is alive now (the loaded run) out of the collector's sight.

    A served run is long-lived; under load, full collections that walked its objects again
    and again were the tail of the latency at 32 concurrent requests. Frozen objects are never
    collected by it, so a reload unfreezes first; the old run is freed by reference counting
    once its last request is answered.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def warm_up(run: Run) -> None:
    """Score one query, so the run answers before it serves (and its caches are built)."""
    first = int(np.flatnonzero(run.rankable)[0])
    query = RunQuery(items=[str(run.catalogue.record(first)["item_id"])], k=1)
    run.recommend_resolved([run.resolve(query)])


@dataclass(frozen=True)
class Serving:
    """What answers now: a run and the batcher over it, replaced whole by a reload."""

    run: Run
    batcher: MicroBatcher[Resolved, list[dict[str, Any]]]
    label: dict[str, str]


class Service:
    """The app's state: the current :class:`Serving`, and how to load and swap in the next."""

    def __init__(
        self, run: Run, loader: Callable[[str | None], Run], metrics: Metrics, max_batch: int
    ) -> None:
        self._first: Run | None = run
        self.loader = loader
        self.metrics = metrics
        self.max_batch = max_batch
        self.current: Serving | None = None
        self.lock: asyncio.Lock | None = None

    async def start(self) -> None:
        """Start a batcher over the run (the latest one, when the app is started again)."""
        self.lock = asyncio.Lock()
        run = self.current.run if self.current else self._first
        assert run is not None
        self._first = None  # held here, the first run would outlive every reload
        self.current = await self._serve(run)

    async def stop(self) -> None:
        if self.current is not None:
            await self.current.batcher.stop()

    async def _serve(self, run: Run) -> Serving:
        batcher = MicroBatcher(
            run.recommend_resolved, self.max_batch, on_batch=self.metrics.batch_size.observe
        )
        await batcher.start()
        info = run.info()
        label = {"run": run.name, "model": info["model"], "item_repr": run.item_repr}
        return Serving(run, batcher, label)

    def serving(self) -> Serving:
        if self.current is None:
            raise HTTPException(503, "the service is starting; no run is loaded yet")
        return self.current

    async def recommend(self, query: RunQuery) -> tuple[Serving, list[dict[str, Any]]]:
        """Resolve ``query`` on the current run (its errors are its own), then score it.

        Nothing awaits between reading ``current`` and ``submit`` queueing the query, so a
        reload cannot stop this batcher in between: the old one answers what it queued.
        """
        serving = self.serving()
        resolved = serving.run.resolve(query)
        return serving, await serving.batcher.submit(resolved)

    async def reload(self, path: str | None) -> tuple[str, Serving, float]:
        """Load a run in a worker thread, check it answers, swap it in, drain the old one.

        Returns the old run's name, the new serving and the seconds the reload took. Nothing
        here references the old run once it is drained: the memory is settled (the collector
        frozen) only then, so the old run is freed rather than frozen in place.
        """
        assert self.lock is not None
        async with self.lock:
            start = time.perf_counter()
            try:
                run = await asyncio.to_thread(self.loader, path)
                await asyncio.to_thread(warm_up, run)
            except Exception as err:
                self.metrics.reloads.labels("failed").inc()
                logger.warning(f"reload failed, still serving the old run: {err}")
                raise
            new = await self._serve(run)
            old, self.current = self.serving(), new
            previous, previous_dir = old.run.name, old.run.run_dir
            await old.batcher.stop()
            del old
            settle_memory()
            self.metrics.reloads.labels("ok").inc()
            seconds = time.perf_counter() - start
            logger.info(f"reloaded: serving {run.run_dir} (was {previous_dir}), {seconds:.1f} s")
            return previous, new, seconds

    async def add_items(self, items: list[dict[str, Any]]) -> tuple[Serving, list[str]]:
        """Add items to the current run (never to one a reload is replacing)."""
        assert self.lock is not None
        async with self.lock:
            serving = self.serving()
            try:
                added = await asyncio.to_thread(serving.run.add_items, items)
            except Unsupported as err:
                raise HTTPException(409, str(err)) from None
            return serving, [str(i) for i in added["item_id"]]


# --------------------------------------------------------------------------------- middleware


class BodyTooLarge(HTTPException):
    """Raised while the body is read, so FastAPI answers it like any HTTP error."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than {limit} bytes; send a smaller one")


class Guard:
    """Bounds request bodies, counts and times every request, and turns an unexpected error
    into a logged one-line 500 (a plain ASGI middleware: it adds little to each request)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body: int, routes: list) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body
        self.routes = routes
        self._paths: dict[Any, str] | None = None

    def route_of(self, scope: Scope) -> str:
        """The route template that answered (a bounded label: no ids, no unknown paths)."""
        route = scope.get("route")
        if route is not None:
            return route.path
        if self._paths is None:  # FastAPI sets "route" for its own routes only
            self._paths = {getattr(r, "endpoint", None) or r.app: r.path for r in self.routes}
        return self._paths.get(scope.get("endpoint"), "unmatched")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status, started = time.perf_counter(), 500, False
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"0")
        received = 0

        async def limited() -> Message:
            nonlocal received
            if declared.isdigit() and int(declared) > self.max_body:
                raise BodyTooLarge(self.max_body)
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                raise BodyTooLarge(self.max_body)
            return message

        async def watched(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        try:
            await self.app(scope, limited, watched)
        except Exception as err:
            logger.opt(exception=err).error(f"{scope['method']} {scope['path']} failed")
            if not started:
                detail = f"internal error ({type(err).__name__}); the service logged it"
                await JSONResponse({"detail": detail}, 500)(scope, receive, watched)
        finally:
            self.metrics.observe_request(
                self.route_of(scope), scope["method"], status, time.perf_counter() - start
            )


def _one_line(errors: list[Any]) -> str:
    """A validation failure as one line: where and what, for the first problem."""
    first = errors[0]
    if first.get("type") == "json_invalid":
        why = first.get("ctx", {}).get("error", "decode error")
        return f"request body is not valid JSON: {why} at character {first['loc'][-1]}"
    where = ".".join(str(part) for part in first.get("loc", ())) or "request"
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        errors = err.errors()
        shown = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in errors]
        return JSONResponse({"detail": _one_line(errors), "errors": shown}, 422)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, err: NotFound) -> JSONResponse:
        body: dict[str, Any] = {"detail": str(err)}
        if err.nearest:
            body["nearest"] = err.nearest
        return JSONResponse(body, 404)

    @app.exception_handler(RecsysError)
    async def unanswerable(request: Request, err: RecsysError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, 422)


# ------------------------------------------------------------------------------------ the app


def create_app(
    run: Run,
    *,
    api_key: str | None = None,
    loader: Callable[[str | None], Run] | None = None,
    max_batch: int = MAX_BATCH,
    max_body: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The service over ``run``; ``api_key`` unlocks adding items and reloads (None: disabled).

    ``loader(path)`` loads the run a reload asks for (default: ``run``'s folder again).
    """
    loader = loader or run_loader(
        run.dataset, run.run_dir, processed_dir=run.processed_root, device=str(run.device)
    )
    service: Service

    def index_size() -> float:
        return float(service.current.run.n_items) if service.current else 0.0

    metrics = Metrics(index_size)
    service = Service(run, loader, metrics, max_batch)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        yield
        await service.stop()

    # FastAPIOffline: the /docs page with Swagger UI's files shipped in the package, because
    # FastAPI's own page loads them from a CDN and shows nothing on a machine offline.
    app = FastAPIOffline(
        title="recsys",
        summary="Next-item recommendations from a GPT-style sequential model.",
        version="1",
        lifespan=lifespan,
        # Prometheus metrics are our own; FastAPI's OpenTelemetry hooks would cost every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.service = service
    app.add_middleware(Guard, metrics=metrics, max_body=max_body, routes=app.router.routes)
    _error_handlers(app)
    key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False)

    def require_key(given: str | None = Security(key_header)) -> None:
        if api_key is None:
            raise HTTPException(
                403,
                f"this endpoint is disabled: set {API_KEY_ENV} when starting the service and "
                f"send it in the {API_KEY_HEADER} header",
            )
        if given is None:
            raise HTTPException(401, f"this endpoint needs the {API_KEY_HEADER} header")
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(403, f"wrong API key in the {API_KEY_HEADER} header")

    @app.post("/v1/recommend", response_model=Answer, responses=ERRORS, tags=["recommend"])
    async def recommend(request: RecommendRequest) -> JSONResponse:
        """Top-k items for a dataset user or an ad-hoc history (by item ids or titles)."""
        serving, rows = await service.recommend(request.query())
        # The rows are built to the Answer schema by the run API; validating them again on
        # every request would cost more than the HTTP layer does.
        return JSONResponse({**serving.label, "items": rows})

    @app.get("/v1/items/search", response_model=Suggestions, responses=ERRORS, tags=["items"])
    def search(
        q: str = Query(..., min_length=1, max_length=200, description="Part of a title."),
        limit: int = Query(10, ge=1, le=MAX_SEARCH),
    ) -> dict[str, Any]:
        """Titles for autocomplete: those starting with or containing ``q``, then fuzzy ones."""
        run = service.serving().run
        found = run.catalogue.search(q, limit)
        return {"query": q, "items": [run.catalogue.record(i) for i in found]}

    @app.get(
        "/v1/items/{item_id}/similar", response_model=Answer, responses=ERRORS, tags=["items"]
    )
    def similar(item_id: str, k: int = Query(10, ge=1, le=MAX_K)) -> dict[str, Any]:
        """The k items whose vectors are nearest (cosine) to this item's."""
        serving = service.serving()
        return {**serving.label, "items": serving.run.similar_records(item_id, k)}

    @app.post(
        "/v1/items",
        response_model=Added,
        status_code=201,
        responses={**ERRORS, **KEYED},
        dependencies=[Security(require_key)],
        tags=["items"],
    )
    async def add_items(body: NewItems) -> dict[str, Any]:
        """Add items by their text; text, hybrid and generative runs rank them at once (a
        generative one gives them semantic IDs through its quantiser); id runs: 409."""
        items = [item.model_dump() for item in body.items]
        serving, added = await service.add_items(items)
        return {"run": serving.run.name, "added": added, "n_items": serving.run.n_items}

    @app.post(
        "/v1/admin/reload",
        response_model=Reloaded,
        responses={**ERRORS, **KEYED},
        dependencies=[Security(require_key)],
        tags=["admin"],
    )
    async def reload(body: ReloadRequest | None = Body(None)) -> dict[str, Any]:
        """Load a run (default: the one the service started with, read again) and swap it in;
        requests in flight finish on the old one."""
        previous, new, seconds = await service.reload(body.run if body else None)
        return {**new.label, "previous": previous, "seconds": round(seconds, 3)}

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], responses={503: {"model": ErrorBody}})
    async def readyz() -> dict[str, Any]:
        """A run is loaded and takes requests; which one."""
        info = service.serving().run.info()
        info.pop("run_dir")  # a server path is nobody else's business
        return {"status": "ready", **info}

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def prometheus() -> Response:
        """Prometheus metrics: requests, latency, batch sizes, index size, reloads."""
        return Response(metrics.render(), media_type=metrics.content_type)

    page = STATIC.joinpath("index.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    async def demo() -> HTMLResponse:
        return HTMLResponse(page)

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app
