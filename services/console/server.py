"""Serve the console: refuse a non-loopback bind without a token, then run uvicorn until stopped."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable

from pydantic import SecretStr

from core.settings import Settings
from curation.history import SCHEMAS
from curation.store import DatasetStore
from retrain_trigger.policy import load_policy
from services.console.app import Console, create_app
from services.console.reader import ConsoleError, HistoryReader
from services.console.series import config_labels
from services.console.slow_pending import DEMO_PENDING_WHY

log = logging.getLogger("loopwatch.console")


def is_loopback(host: str) -> bool:
    """True when ``host`` (a name or an address) resolves only to loopback addresses."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    addresses = {str(info[4][0]) for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def token_value(token: SecretStr | None) -> str | None:
    """The token to require, or None: an empty ``LOOPWATCH_CONSOLE_TOKEN`` guards nothing, so it is unset."""
    value = token.get_secret_value().strip() if token is not None else ""
    return value or None


def check_bind(host: str, token: SecretStr | None) -> None:
    """Refuse to listen beyond this machine unless a token guards the console."""
    if token_value(token) is None and not is_loopback(host):
        raise ConsoleError(
            f"refusing to serve the console on {host}: anyone who can reach it could read the history;"
            " set LOOPWATCH_CONSOLE_TOKEN (then every request must carry it) or bind 127.0.0.1"
        )


#: What the Dead letters page of a demo's console says: its replay commands name no broker.
DEMO_REPLAY_NOTE = (
    "The demo's broker stopped with the demo: replay into a Kafka of yours (set --bootstrap HOST:PORT)."
)


def build_console(
    settings: Settings,
    *,
    history: str | None = None,
    datasets: str | None = None,
    demo: bool = False,
    policy: str | None = None,
) -> Console:
    """The console's readers over ``--history`` / ``--datasets``, else the settings' roots.

    The Incidents page explains ``policy`` (a file; else ``LOOPWATCH_POLICY_FILE``, as the workers read
    it; else the built-in default policy); a policy that does not load stops the console with its error.

    The replay commands it shows name ``settings.kafka_bootstrap`` only when it was given (a flag or
    ``LOOPWATCH_KAFKA_BOOTSTRAP``): the default could be someone else's broker on this machine. A
    ``demo`` console names none: the demo ran its own broker, gone once the demo ended, whatever the
    environment says.
    """
    from streams.detect_stage import load_specs

    specs = load_specs(settings.detectors_file)
    policy_file = policy or (str(settings.policy_file) if settings.policy_file is not None else None)
    return Console(
        history=HistoryReader(history or settings.history_uri()),
        datasets=DatasetStore(datasets or settings.datasets_uri()),
        stable_versions=dict(settings.stable_versions),
        config_labels=config_labels((s.detector_id, s.config) for s in specs),
        slow_detectors=frozenset(s.detector_id for s in specs if s.slow),
        slow_kinds={s.detector_id: s.kind for s in specs if s.slow},
        detector_kinds={s.detector_id: s.kind for s in specs},
        bootstrap=None
        if demo or "kafka_bootstrap" not in settings.model_fields_set
        else settings.kafka_bootstrap,
        replay_note=DEMO_REPLAY_NOTE if demo else None,
        pending_why=DEMO_PENDING_WHY if demo else None,
        policy=load_policy(policy_file),
        policy_file=policy_file,
    )


#: How the log names the tables a young run has not written yet.
_RECORDED = {"alerts": "alerts", "actions": "actions", "deadletters": "dead letters"}


def warn_if_missing(history: HistoryReader, *, this_run: bool = False) -> list[str]:
    """Log what of the history is not under the root: a warning when none of it is (wrong --history?).

    ``this_run``: the history is written by the run that started the console (``loopwatch up``,
    ``demo --console``), so none of it yet is its normal start (trial 12n), said at INFO.

    The history stage writes each table with its first batch: a young or healthy run has no alerts,
    actions or dead letters yet, and said as a warning that read as a fault (trial 12m), so some
    tables missing is said at INFO. The console serves either way: they may appear.
    """
    missing = history.missing()
    if len(missing) == len(SCHEMAS) and this_run:
        log.info(
            "console: nothing written yet under %s: this run's history stage writes there with its"
            " first batch (pages fill in as it does)",
            history.root,
        )
    elif len(missing) == len(SCHEMAS):
        log.warning(
            "console: no history at all under %s (wrong --history? pages stay empty until the history"
            " stage writes there)",
            history.root,
        )
    elif missing:
        names = [_RECORDED.get(m, m) for m in missing]
        said = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
        log.info("console: no %s recorded yet under %s (so far; their pages stay empty)", said, history.root)
    return missing


def address(host: str, port: int) -> str:
    """The console's URL for a person to open."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free one), so the address is known before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConsoleError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.listen(128)
    return sock


def serve(
    console: Console,
    *,
    host: str,
    port: int,
    token: SecretStr | None,
    on_ready: Callable[[str], None] | None = None,
    log_level: str = "warning",
    this_run: bool = False,
) -> None:
    """Listen on ``host:port`` until Ctrl-C; ``on_ready`` gets the address once it listens.

    ``this_run``: the run that started it writes the history (see ``warn_if_missing``).
    """
    import uvicorn

    check_bind(host, token)
    warn_if_missing(console.history, this_run=this_run)
    app = create_app(console, token=token_value(token))
    sock = listen(host, port)
    if on_ready is not None:
        on_ready(address(host, sock.getsockname()[1]))
    # No access log: a browser's first request carries the token in its query string.
    config = uvicorn.Config(app, log_level=log_level, access_log=False)
    # uvicorn shuts down cleanly on Ctrl-C, then raises it again: stopping is what was asked.
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run(sockets=[sock])
