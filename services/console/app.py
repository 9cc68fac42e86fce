"""The console's web app: HTML pages and the JSON API under ``/api/`` they use, read-only.

Every page has a stable URL (``/overview``, ``/segments/<segment key>``,
``/incidents``, ``/deadletters``, ``/datasets``) that takes ``?day=YYYY-MM-DD``
(the last day shown, default the newest in the history) and ``?days=N``. Its
charts fetch the same URL under ``/api/``. Scripts and styles (Plotly from its
PyPI package) are served by the console itself: it works without internet.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, BeforeValidator, Field
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from curation.store import DatasetStore
from retrain_trigger.policy import Policy, load_policy
from services.console.datasets import Datasets, Preview, datasets_view, preview_view
from services.console.deadletter_page import DeadLetters, deadletters_view
from services.console.policy_gates import p_value_gates
from services.console.reader import ConsoleError, HistoryReader
from services.console.segment import SegmentView, segment_view
from services.console.slow_pending import no_worker
from services.console.views import (
    DayRange,
    Incidents,
    Overview,
    incidents_view,
    overview_view,
    report_path,
    resolve_range,
)
from services.console.window_close import CLOSED_BY_MEANS

_HERE = Path(__file__).resolve().parent
TOKEN_COOKIE = "loopwatch_console_token"
TOKEN_HEADER = "x-loopwatch-token"
#: The Datasets page lists this many newest versions per table, the older ones folded under a count.
LATEST_VERSIONS = 10


def _plain_day(value: Any) -> Any:
    """A day as ``2026-12-04`` only: pydantic also takes ``2026-12-04T00:00:00`` (trial 24)."""
    if isinstance(value, str) and not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
        raise PydanticCustomError("date_format", "a day like 2026-12-04")
    return value


def _plain_count(value: Any) -> Any:
    """A number in plain digits: pydantic also takes ``5_0`` (50) and ``+5`` (trial 24)."""
    if isinstance(value, str) and not re.fullmatch(r"[0-9]+", value):
        raise PydanticCustomError("int_digits", "Input should be a valid integer, in plain digits (e.g. 7)")
    return value


Day = Annotated[
    date | None,
    BeforeValidator(_plain_day),
    Query(description="Last day shown (UTC), default the newest in the history"),
]
Days = Annotated[
    int,
    BeforeValidator(_plain_count),
    Query(ge=1, le=400, description="How many days to show, ending on `day`"),
]


@dataclass
class Console:
    """What the app reads: the history and dataset roots, and the stable versions it knows of."""

    history: HistoryReader
    datasets: DatasetStore
    stable_versions: Mapping[str, str] = field(default_factory=dict)
    #: config_id -> what sets a detector's config apart (``column=prompt_chars``), for chart labels.
    config_labels: Mapping[str, str] = field(default_factory=dict)
    #: The detectors the slow queue runs (skipped when it is full): named where they judged nothing.
    slow_detectors: frozenset[str] = frozenset()
    #: The window kind (inference) each slow detector reads, to count the windows it has not judged yet.
    slow_kinds: Mapping[str, str] = field(default_factory=dict)
    #: The window kind every detector reads: a point's hover says when that kind of its window closed.
    detector_kinds: Mapping[str, str] = field(default_factory=dict)
    #: The Kafka the replay commands name (``--bootstrap``); None: a placeholder the user must fill in.
    bootstrap: str | None = None
    #: Said next to the replay commands, e.g. that the demo's broker stopped with the demo.
    replay_note: str | None = None
    #: Why slow verdicts stay pending when no worker runs (a demo's console); None: a worker may judge them.
    pending_why: str | None = None
    #: The policy the workers decide with, which the Incidents page explains (None: the built-in default).
    policy: Policy | None = None
    #: Its file (None: the built-in default policy).
    policy_file: str | None = None

    def decision_policy(self) -> Policy:
        """The policy the Incidents page explains: the workers' one, else the built-in default."""
        if self.policy is None:
            self.policy = load_policy()
        return self.policy


def plotly_js() -> Path:
    """plotly.min.js as the plotly wheel ships it."""
    import plotly

    return Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"


def instant(at: datetime | None) -> str:
    """``2026-12-01 12:09:00+00:00``: a time as the pages show it, to the second (no ``.594000``)."""
    return "" if at is None else str(at.replace(microsecond=0))


def _parameter_error(error: Mapping[str, Any]) -> str:
    """``day: a day like 2026-12-04, not '2026-12-04T10:00:00'``: one message for every bad day (trial
    12u: a time of day got pydantic's "Datetimes provided to dates should have zero time", a word
    "valid date or datetime"); other parameters say what pydantic says."""
    name = ".".join(str(p) for p in error["loc"] if p != "query")
    if str(error["type"]).startswith("date_"):
        return f"{name}: a day like 2026-12-04, not {error.get('input')!r}"
    return f"{name}: {error['msg']}"


class ApiError(BaseModel):
    """What every failed /api/ request answers (a generated client parses errors with it)."""

    error: str = Field(
        description="What is wrong, in words: unknown query parameter x: /api/datasets takes ..."
    )


#: The failures every /api/ route can answer, in the OpenAPI document (in place of FastAPI's
#: ``HTTPValidationError``, which the console never sends: trial 22).
API_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ApiError,
        "description": "An unknown or repeated query parameter, or a day range out of bounds",
    },
    401: {
        "model": ApiError,
        "description": "LOOPWATCH_CONSOLE_TOKEN is set and the request did not carry it",
    },
    404: {"model": ApiError, "description": "No such segment, table, version, report or route"},
    405: {"model": ApiError, "description": "A method other than GET (the answer's Allow header says so)"},
    422: {
        "model": ApiError,
        "description": "A query parameter's value is not valid, e.g. days=0 or day=yesterday",
    },
}

#: The same, for a route whose answer is not JSON (FastAPI would file the errors under its media type).
_JSON_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {
        "description": response["description"],
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ApiError.__name__}"}}},
    }
    for status, response in API_ERRORS.items()
}


def create_app(console: Console, *, token: str | None = None) -> FastAPI:
    """The console app over ``console``; with ``token``, every request must carry it."""
    app = FastAPI(
        title="loopwatch console",
        summary="Read-only views of loopwatch's monitoring history and curated datasets",
        version="1",
        openapi_url="/api/openapi.json",
        docs_url=None,  # Swagger UI loads its scripts from a CDN: the console serves none
        redoc_url=None,
        responses=API_ERRORS,
    )
    templates = Jinja2Templates(directory=_HERE / "templates")
    templates.env.globals["closed_by_means"] = CLOSED_BY_MEANS  # the Segment page's table of closes
    templates.env.globals["pending_why"] = console.pending_why  # no worker runs: pending stays pending
    templates.env.filters["segment_url"] = lambda key: "/segments/" + quote(key, safe="")
    templates.env.filters["instant"] = instant
    app.mount("/static", StaticFiles(directory=_HERE / "static"), name="static")

    def error(
        request: Request, message: str, status: int, headers: Mapping[str, str] | None = None
    ) -> Response:
        """``{"error": ...}`` for the API and scripts, an HTML page for a browser opening a page."""
        if request.url.path.startswith("/api/") or "text/html" not in request.headers.get("accept", ""):
            return JSONResponse({"error": message}, status_code=status, headers=headers)
        context = {"page": "error", "status": status, "message": message}
        return templates.TemplateResponse(request, "error.html", context, status_code=status, headers=headers)

    if token is not None:
        _require_token(app, token, error)
    _refuse_odd_parameters(app, error)  # added last, so it runs first: before the token's redirect

    @app.exception_handler(ConsoleError)
    async def _console_error(request: Request, exc: ConsoleError) -> Response:
        return error(request, str(exc), exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # Unknown routes and methods answer like every other error, not with Starlette's {"detail": ...}.
        message = f"no such page: {request.url.path}" if exc.status_code == 404 else str(exc.detail)
        return error(request, message, exc.status_code, exc.headers)  # a 405's Allow header kept

    @app.exception_handler(RequestValidationError)
    async def _bad_parameter(request: Request, exc: RequestValidationError) -> Response:
        return error(request, "; ".join(_parameter_error(e) for e in exc.errors()), 422)

    def span(day: date | None, days: int, *shown: str) -> DayRange:
        return resolve_range(console.history, day, days, shown or ("windows",))

    def page(request: Request, name: str, **context: Any) -> Response:
        query = urlencode({k: v for k, v in request.query_params.items() if k != "token"})
        api = f"/api{request.url.path}"
        return templates.TemplateResponse(
            request, f"{name}.html", {"page": name, "query": query, "api": api, **context}
        )

    @app.get("/vendor/plotly.min.js", include_in_schema=False)
    def _plotly() -> Response:
        # A 4.5 MB script that only changes with the plotly wheel: let the browser keep it a day.
        return FileResponse(
            plotly_js(), media_type="text/javascript", headers={"Cache-Control": "max-age=86400"}
        )

    @app.get("/favicon.ico", include_in_schema=False)
    def _favicon() -> Response:
        # Browsers ask for it on every first visit; a 404 there is noise in their console.
        return FileResponse(_HERE / "static" / "favicon.ico", media_type="image/x-icon")

    @app.get("/", include_in_schema=False)
    def _home() -> Response:
        return RedirectResponse("/overview")

    @app.get("/api/overview", response_model=Overview, tags=["pages"])
    def api_overview(day: Day = None, days: Days = 1) -> Overview:
        """Every segment with traffic: last window, worst verdict, open alerts; stable beside canary."""
        # The detectors file's kinds: a detector outside the built-in set is not grouped as "other".
        return overview_view(
            console.history,
            span(day, days),
            console.stable_versions,
            console.slow_detectors,
            kinds=console.detector_kinds,
        )

    @app.get("/api/segments/{segment:path}", response_model=SegmentView, tags=["pages"])
    def api_segment(segment: str, day: Day = None, days: Days = 1) -> SegmentView:
        """One segment: each detector's statistic over windows with its threshold and verdicts."""
        view = segment_view(
            console.history,
            segment,
            span(day, days),
            console.config_labels,
            console.slow_detectors,
            console.slow_kinds,
            console.detector_kinds,
        )
        alpha = {d.detector_id for d in view.detectors if d.threshold_kind == "alpha"}
        update: dict[str, Any] = {"gates": p_value_gates(console.decision_policy(), segment, alpha)}
        if console.pending_why and view.pending:
            update["pending"] = no_worker(view.pending, console.pending_why)
        return view.model_copy(update=update)

    @app.get("/api/incidents", response_model=Incidents, tags=["pages"])
    def api_incidents(day: Day = None, days: Days = 7) -> Incidents:
        """The alert timeline, the actions taken with their CloudEvent ids and causes, the silences."""
        shown = span(day, days, "alerts", "actions")
        return incidents_view(console.history, shown, console.decision_policy(), console.policy_file)

    @app.get("/api/deadletters", response_model=DeadLetters, tags=["pages"])
    def api_deadletters(day: Day = None, days: Days = 1) -> DeadLetters:
        """Dead letters by reason over time, samples (escaped) and the replay command per reason."""
        view = deadletters_view(console.history, span(day, days, "deadletters"), bootstrap=console.bootstrap)
        return view.model_copy(update={"replay_note": console.replay_note})

    @app.get("/api/datasets", response_model=Datasets, tags=["pages"])
    def api_datasets() -> Datasets:
        """Each curated table with its versions, row counts, tags and export command."""
        return datasets_view(console.datasets)

    @app.get("/api/datasets/{table}/rows", response_model=Preview, tags=["pages"])
    def api_dataset_rows(
        table: str,
        version: Annotated[
            int | None, BeforeValidator(_plain_count), Query(ge=0, description="Delta version [latest]")
        ] = None,
        limit: Annotated[int, BeforeValidator(_plain_count), Query(ge=1, le=500)] = 20,
    ) -> Preview:
        """The first rows of one table version."""
        return preview_view(console.datasets, table, version, limit)

    # The report is HTML; its errors are JSON as every route's are (a browser gets an HTML error page).
    @app.get("/reports", tags=["pages"], response_class=HTMLResponse, responses=_JSON_ERRORS)
    def report(segment: str, day: date, detection: str) -> Response:
        """The Evidently report of one window (a file the detection names)."""
        path = Path(report_path(console.history, segment, day, detection))
        if path.suffix != ".html" or not path.is_file():
            raise ConsoleError(f"the report of detection {detection!r} is not on this machine", 404)
        return FileResponse(path, media_type="text/html")

    @app.get("/overview", include_in_schema=False)
    def overview_page(request: Request, day: Day = None, days: Days = 1) -> Response:
        return page(request, "overview", view=api_overview(day, days))

    @app.get("/segments", include_in_schema=False)
    def segments_page(request: Request, day: Day = None, days: Days = 1) -> Response:
        return page(request, "segments", view=api_overview(day, days))

    @app.get("/segments/{segment:path}", include_in_schema=False)
    def segment_page(request: Request, segment: str, day: Day = None, days: Days = 1) -> Response:
        return page(request, "segment", view=api_segment(segment, day, days))

    @app.get("/incidents", include_in_schema=False)
    def incidents_page(request: Request, day: Day = None, days: Days = 7) -> Response:
        return page(request, "incidents", view=api_incidents(day, days))

    @app.get("/deadletters", include_in_schema=False)
    def deadletters_page(request: Request, day: Day = None, days: Days = 1) -> Response:
        return page(request, "deadletters", view=api_deadletters(day, days))

    @app.get("/datasets", include_in_schema=False)
    def datasets_page(request: Request) -> Response:
        view = api_datasets()
        previews = {t.table: preview_view(console.datasets, t.table, t.version, 10) for t in view.tables}
        return page(request, "datasets", view=view, previews=previews, latest_versions=LATEST_VERSIONS)

    return app


def _refuse_odd_parameters(app: FastAPI, error: Callable[[Request, str, int], Response]) -> None:
    """A request to a documented route (/api/, /reports) with an unknown or repeated query parameter gets
    a 400 naming it.

    FastAPI ignores a parameter a route does not take and keeps the last of a repeated one: a script
    asking ``?day=A&day=B`` or ``?limit=x`` of a route without a limit would get an answer it did not ask for.
    """

    @app.middleware("http")
    async def _check(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        problem = _parameter_problem(app, request)
        if problem is not None:
            return error(request, problem, 400)
        return await call_next(request)


def _parameter_problem(app: FastAPI, request: Request) -> str | None:
    """What is wrong with the request's query parameters for the route it matches (None: nothing).

    Only the routes the OpenAPI document describes, and the document itself, are held to it: the
    pages and static files are opened by browsers and links, which may add what they like.
    """
    for route in app.routes:
        if route.matches(request.scope)[0] != Match.FULL:
            continue
        if not getattr(route, "include_in_schema", False) and getattr(route, "path", None) != app.openapi_url:
            return None
        # Its routes take no Depends: their own query parameters are all there is (and the token's);
        # the OpenAPI document's route takes none.
        query = route.dependant.query_params if isinstance(route, APIRoute) else []
        taken = {p.alias for p in query} | {"token"}
        names = [name for name, _ in request.query_params.multi_items()]
        unknown = sorted({n for n in names if n not in taken})
        if unknown:
            takes = ", ".join(sorted(taken - {"token"})) or "no query parameter"
            return f"unknown query parameter {', '.join(unknown)}: {request.url.path} takes {takes}"
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            return f"query parameter {', '.join(repeated)} given more than once: give it once"
        return None
    return None


def _require_token(app: FastAPI, token: str, error: Callable[[Request, str, int], Response]) -> None:
    """Every request must carry ``token``: a header (scripts), or a cookie set from ``?token=`` (browsers)."""
    expected = token.encode()

    def matches(supplied: str | None) -> bool:
        # Constant time, so the token cannot be guessed a character at a time.
        return supplied is not None and hmac.compare_digest(supplied.encode(), expected)

    @app.middleware("http")
    async def _check(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        bearer = request.headers.get("authorization", "")
        from_header = request.headers.get(TOKEN_HEADER) or (
            bearer[7:] if bearer.lower().startswith("bearer ") else None
        )
        if matches(from_header) or matches(request.cookies.get(TOKEN_COOKIE)):
            return await call_next(request)
        if matches(request.query_params.get("token")):
            # Into a cookie, and out of the address bar (and so of the browser's history).
            rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            response = RedirectResponse(request.url.path + (f"?{rest}" if rest else ""), status_code=303)
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
            return response
        return error(
            request,
            "this console requires its token: header X-Loopwatch-Token or Authorization: Bearer,"
            " or open it once with ?token=...",
            401,
        )
