"""``greenroom eval``: measuring personas and models.

``eval stability`` runs the stability harness (:mod:`bot.evaluation`): seeded conversations
with a simulated user through the real engine, probed every few turns in side branches, scored
by code; one run, or two side by side (``--compare-model``, ``--compare-card``) on the same
user lines. Bad input ends the command with one line on standard error and exit code 2 before
any model loads.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bot.cli_common import err_console, fail, settings_or_exit
from bot.evaluation.records import MAX_CONVERSATIONS, MAX_TURNS, StabilityConfig
from bot.llm import ModelUnavailableError, build_chat_model
from bot.settings import ConfigError
from personas import CardError, Persona, PersonaRegistry, UnknownPersonaError, load_card
from personas.probes import PROBE_KINDS, ProbeError, ProbeSet, card_probes

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from bot.settings import ModelSettings, Settings
    from memory import Embedder
    from personas import CharacterCard

__all__ = ["eval_app"]

_log = logging.getLogger(__name__)

eval_app = typer.Typer(no_args_is_help=True, help="Measure personas and models.")

_MODEL_HELP = (
    "KEY=VALUE pairs, comma-separated, over the model settings (provider=openai,"
    "name=NAME,base_url=URL; gguf_path=FILE; temperature=0). Repeatable."
)


@eval_app.command("stability")
def stability_command(
    persona: Annotated[str, typer.Option(help="The persona to measure.")],
    turns: Annotated[int, typer.Option(help=f"Exchanges per conversation (1-{MAX_TURNS}).")] = 32,
    conversations: Annotated[
        int, typer.Option(help=f"Seeded conversations (1-{MAX_CONVERSATIONS}).")
    ] = 5,
    every: Annotated[int, typer.Option(help="Probe every K exchanges, and before the first.")] = 4,
    seed: Annotated[int, typer.Option(help="Picks openings, user names and probe order.")] = 0,
    model: Annotated[list[str] | None, typer.Option(help=_MODEL_HELP)] = None,
    user_model: Annotated[
        list[str] | None,
        typer.Option(help="The simulated user's model, like --model (default: the persona's)."),
    ] = None,
    card: Annotated[
        Path | None, typer.Option(help="A card file (JSON or PNG) to use instead of the installed.")
    ] = None,
    compare_model: Annotated[
        list[str] | None,
        typer.Option(help="Run b's model, like --model; runs a and b side by side."),
    ] = None,
    compare_card: Annotated[
        Path | None, typer.Option(help="Run b's card file; runs a and b side by side.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for the JSON, the plots and the work.")] = Path(
        "stability"
    ),
) -> None:
    """Measure how steadily a persona keeps its card over long conversations.

    Writes OUT/stability.json and OUT/stability.png (side by side: OUT/a/, OUT/b/ and
    OUT/comparison.json and .png). Each run works on a fresh SQLite database and Chroma
    store in OUT/.work/, deleted by the next run into OUT.
    """
    settings = settings_or_exit()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = StabilityConfig(turns=turns, conversations=conversations, every=every, seed=seed)
    except ValueError as error:
        fail(str(error).replace("every must", "--every must").replace("turns must", "--turns must"))
    registry = PersonaRegistry.load(settings.persona_search_dirs)
    card_a = _card(card, persona, "--card")
    card_b = _card(compare_card, persona, "--compare-card")
    try:
        # A card file may bring a persona that is not installed.
        persona_a = Persona(card_a) if card_a is not None else registry.get(persona)
    except UnknownPersonaError as error:
        fail(str(error))
    side_by_side = compare_model is not None or compare_card is not None
    persona_b = Persona(card_b) if card_b is not None else persona_a
    try:
        probes_a = card_probes(persona_a)
        probes_b = card_probes(persona_b) if side_by_side else probes_a
        settings_a = _model_settings(settings, model, "--model")
        settings_b = _model_settings(settings, compare_model, "--compare-model")
        settings_user = _user_settings(settings, settings_a, user_model)
    except (ProbeError, ConfigError) as error:
        fail(str(error))
    _say_probes(probes_a, "a" if side_by_side else None)
    if side_by_side:
        _say_probes(probes_b, "b")
        if probes_a.probes != probes_b.probes:
            err_console.print(
                "[yellow]note:[/] the two cards give different probes; each run is scored on "
                "its own card's",
                highlight=False,
            )
    try:
        models = [build_chat_model(settings_a), build_chat_model(settings_user)]
        if side_by_side:
            models.append(build_chat_model(settings_b))
    except ModelUnavailableError as error:
        fail(str(error))
    runs = [("a", models[0], card_a, probes_a)]
    if side_by_side:
        runs.append(("b", models[2], card_b if card_b is not None else card_a, probes_b))
    try:
        summaries = asyncio.run(
            _run_all(settings, config, persona_a.name, runs, models[1], out, side_by_side)
        )
    except (ProbeError, CardError, ConfigError, FileExistsError, ModelUnavailableError) as error:
        fail(str(error))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    _print_summary(summaries)


def _card(path: Path | None, persona: str, option: str) -> CharacterCard | None:
    """The card file's card, which must be ``persona``'s (any case)."""
    if path is None:
        return None
    try:
        card = load_card(path)
    except CardError as error:
        fail(f"{option}: {error}")
    if card.data.name.strip().casefold() != persona.strip().casefold():
        fail(f"{option}: {path} is the card of {card.data.name!r}, not {persona!r}")
    return card


def _model_settings(settings: Settings, specs: list[str] | None, option: str) -> ModelSettings:
    from bot.evaluation.models import model_settings

    return model_settings(settings.model, specs or [], option=option)


def _user_settings(
    settings: Settings, persona_model: ModelSettings, specs: list[str] | None
) -> ModelSettings:
    from bot.evaluation.models import model_settings, user_model_settings

    if specs:
        return model_settings(settings.model, specs, option="--user-model")
    return user_model_settings(persona_model)


def _say_probes(probes: ProbeSet, run: str | None) -> None:
    prefix = f"run {run}: " if run else ""
    err_console.print(f"{prefix}{probes.describe()}", highlight=False, soft_wrap=True)
    if probes.not_derived:
        err_console.print(
            f"{prefix}{len(probes.not_derived)} lines of the card gave no probe (listed in "
            "stability.json under probes.not_derived; declare probes for them)",
            highlight=False,
            soft_wrap=True,
        )


def _embedder(settings: Settings) -> Embedder | None:
    if not settings.memory.enabled:
        err_console.print(
            "[yellow]note:[/] memory is off (memory.enabled = false): no recall, and no "
            "contradiction or drift flags",
            highlight=False,
        )
        return None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from memory import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(
        backend=settings.memory.embedding_backend, onnx_cache_dir=settings.data_dir / "models"
    )


async def _run_all(
    settings: Settings,
    config: StabilityConfig,
    persona: str,
    runs: list[tuple[str, BaseChatModel, CharacterCard | None, ProbeSet]],
    user_model: BaseChatModel,
    out: Path,
    side_by_side: bool,
) -> list[dict[str, Any]]:
    from bot.evaluation import run_stability, summarize, write_comparison, write_run

    embedder = await asyncio.to_thread(_embedder, settings)
    summaries: list[dict[str, Any]] = []
    replay: list[list[str]] | None = None
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        for label, model, card, probes in runs:
            task = progress.add_task(
                f"run {label}" if side_by_side else "turns",
                total=config.conversations * config.turns,
            )
            result = await run_stability(
                settings,
                out / ".work" / label,
                persona=persona,
                config=config,
                model=model,
                user_model=user_model if replay is None else None,
                embedder=embedder,
                probes=probes,
                card=card,
                replay=replay,
                label=label,
                on_turn=lambda task=task: progress.advance(task),
            )
            summary = summarize(result)
            written = write_run(summary, out / label if side_by_side else out)
            summaries.append(summary)
            replay = [conversation.user_lines() for conversation in result.conversations]
            err_console.print(f"wrote {', '.join(map(str, written))}", highlight=False)
    if side_by_side:
        written = write_comparison(summaries[0], summaries[1], out)
        err_console.print(f"wrote {', '.join(map(str, written))}", highlight=False)
    return summaries


def _percent(value: float | None, *, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.0%}" if signed else f"{value:.0%}"


def _print_summary(summaries: list[dict[str, Any]]) -> None:
    """Pass rate per kind for each run, its change from the first probe point to the last,
    and side by side the difference ``b - a``."""
    columns = ["probes"]
    for summary in summaries:
        columns += [f"run {summary['label']}", "last - first depth"]
    if len(summaries) == 2:
        columns.append("b - a")
    table = Table(*columns, title="pass rate")
    for series in ("overall", *PROBE_KINDS):
        cells = [series]
        for summary in summaries:
            rate = summary["pass_rate"][series]
            asked = f"{_percent(rate['rate'])} of {rate['asked']}" if rate["asked"] else "-"
            cells += [asked, _percent(summary["change"].get(series), signed=True)]
        if len(summaries) == 2:
            a, b = (summary["pass_rate"][series]["rate"] for summary in summaries)
            cells.append(_percent(None if a is None or b is None else b - a, signed=True))
        table.add_row(*cells)
    console = Console()
    console.print(table)
    for summary in summaries:
        timing = summary["timing"]
        console.print(
            f"run {summary['label']}: {timing['turns']} turns and {timing['probes']} probes in "
            f"{timing['seconds']:.0f} s ({timing['turns_per_s'] or 0:.3f} turns/s)",
            highlight=False,
        )
