"""``greenroom status``: are the configured dependencies usable, and is the bot healthy?

Checks, from the settings: the database (connect, ``SELECT 1``, the schema's revision), the
memory store (a Chroma server's heartbeat, or the embedded store's files), the embedding and chat
model files (or, for an OpenAI-compatible server, its ``/models``), and the running bot's
``/healthz`` when ``health.port`` is set. Prints a table; exit code 0 when healthy, 1 when
anything is degraded.

Limits: the embedded Chroma store is not opened (one process only: the bot may hold it), only
its files are looked at; a bot that is not running is reported, not counted as degraded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import typer
from rich.console import Console
from rich.table import Table

from bot.cli_common import settings_or_exit

if TYPE_CHECKING:
    from bot.settings import Settings

__all__ = ["Check", "collect_checks", "status_command"]

_log = logging.getLogger(__name__)

_TIMEOUT_S = 3.0

State = Literal["ok", "degraded", "off", "info"]


@dataclass(frozen=True)
class Check:
    """One line of the status table: ``degraded`` makes the exit code 1."""

    name: str
    state: State
    detail: str


def _database(settings: Settings) -> list[Check]:
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:" and not Path(path).exists():
            return [Check("database", "info", f"{path} does not exist yet (made at first start)")]
    return asyncio.run(_ping_database(url))


async def _ping_database(url: str) -> list[Check]:
    """The database's check: it answers, and its schema is current."""
    from alembic.script import ScriptDirectory
    from sqlalchemy import text

    from feedback.database import alembic_config, create_engine

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    engine = create_engine(url)
    where = engine.url.render_as_string(hide_password=True)
    try:
        async with asyncio.timeout(_TIMEOUT_S), engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
            try:
                revision = await connection.scalar(text("SELECT version_num FROM alembic_version"))
            except Exception:
                revision = None
    except Exception as error:
        return [Check("database", "degraded", f"{where}: {type(error).__name__}: {error}"[:300])]
    finally:
        await engine.dispose()
    schema = (
        "schema up to date"
        if revision == head
        else f"schema at {revision or 'nothing'}, newest {head} (migrated at start)"
    )
    return [Check("database", "ok", f"{where}: reachable, {schema}")]


def _chroma(settings: Settings) -> Check:
    memory = settings.memory
    if not memory.enabled:
        return Check("memory store", "off", "memory.enabled is false")
    if memory.chroma_host:
        url = f"http://{memory.chroma_host}:{memory.chroma_port}/api/v2/heartbeat"
        try:
            with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
                response.read()
        except (OSError, ValueError) as error:
            return Check("memory store", "degraded", f"chroma server {url}: {error}")
        return Check(
            "memory store", "ok", f"chroma server {memory.chroma_host}:{memory.chroma_port}"
        )
    path = settings.data_dir / "chroma"
    if (path / "chroma.sqlite3").exists():
        return Check("memory store", "ok", f"embedded at {path} (files present, not opened)")
    return Check("memory store", "info", f"embedded at {path}: not created yet")


def _embedding_model(settings: Settings) -> Check:
    if not settings.memory.enabled:
        return Check("embedding model", "off", "memory.enabled is false")
    try:
        from memory import bundled_model_path

        path = bundled_model_path()
    except Exception as error:
        return Check("embedding model", "degraded", f"not installed: {error}")
    if not path.is_dir():
        return Check("embedding model", "degraded", f"{path} is missing")
    return Check("embedding model", "ok", str(path))


def _chat_model(settings: Settings) -> Check:
    model = settings.model
    if model.provider == "fake":
        return Check("chat model", "ok", "fake (instant echo)")
    if model.provider == "local":
        from bot.llm import ModelUnavailableError
        from bot.llm.local import bundled_gguf_path, check_gguf

        try:
            path = check_gguf(model.gguf_path or bundled_gguf_path())
        except ModelUnavailableError as error:
            return Check("chat model", "degraded", str(error))
        return Check("chat model", "ok", f"local {path}")
    key = os.environ.get(model.api_key_env, "").strip()
    if not key and model.base_url is None:
        return Check("chat model", "degraded", f"openai: {model.api_key_env} is not set")
    base = (model.base_url or "https://api.openai.com/v1").rstrip("/")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(f"{base}/models", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            response.read()
    except urllib.error.HTTPError as error:
        if error.code < 500 and error.code not in (401, 403):
            return Check("chat model", "ok", f"openai {base}: reachable (GET /models {error.code})")
        if not key:
            return Check(
                "chat model",
                "degraded",
                f"openai {base}: HTTP {error.code}; it wants a key in {model.api_key_env}",
            )
        return Check("chat model", "degraded", f"openai {base}: HTTP {error.code}")
    except (OSError, ValueError) as error:
        return Check("chat model", "degraded", f"openai {base}: {error}")
    return Check("chat model", "ok", f"openai {base} ({model.name})")


def _bot(settings: Settings) -> list[Check]:
    health = settings.health
    if not health.port:
        return [Check("bot", "info", "health.port is not set: /healthz is off")]
    url = f"http://{health.host}:{health.port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S + health.probe_timeout_s) as response:
            report = json.loads(response.read())
    except urllib.error.HTTPError as error:
        if error.code != 503:
            return [Check("bot", "degraded", f"{url}: HTTP {error.code}")]
        report = json.loads(error.read())
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        return [Check("bot", "info", f"not running ({url}: {reason})")]
    checks = [
        Check(
            "bot",
            "ok" if report.get("status") == "ok" else "degraded",
            f"{url}: {report.get('status')}",
        )
    ]
    for name, entry in report.get("checks", {}).items():
        state = str(entry.get("state"))
        good = state in ("ok", "off", "unknown")
        detail = state
        if entry.get("last_error") and not good:
            detail += f": {entry['last_error']}"
        if entry.get("latency_ms") is not None:
            detail += f" ({entry['latency_ms']} ms)"
        if entry.get("waiting_messages"):
            detail += f", {entry['waiting_messages']} messages waiting"
        checks.append(Check(f"bot: {name}", "ok" if good else "degraded", detail))
    return checks


def collect_checks(settings: Settings) -> list[Check]:
    """Every check, in table order (each bounded by a few seconds)."""
    checks = _database(settings)
    checks += [_chroma(settings), _embedding_model(settings), _chat_model(settings)]
    checks += _bot(settings)
    return checks


_STYLE = {"ok": "green", "degraded": "red", "off": "dim", "info": "yellow"}


def status_command() -> None:
    """Check the database, memory store, models and the running bot; exit 1 if degraded."""
    settings = settings_or_exit()
    checks = collect_checks(settings)
    table = Table("check", "state")
    table.add_column("detail", overflow="fold")
    for check in checks:
        table.add_row(check.name, f"[{_STYLE[check.state]}]{check.state}[/]", check.detail)
    Console(width=max(100, Console().width)).print(table)
    degraded = [check.name for check in checks if check.state == "degraded"]
    if degraded:
        raise typer.Exit(1)
