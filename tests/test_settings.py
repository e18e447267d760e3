"""Configuration: defaults, then greenroom.toml, then GREENROOM_ environment variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.settings import ConfigError, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(__import__("os").environ):
        if name.startswith("GREENROOM_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    settings = load_settings()
    assert settings.data_dir == Path("data")
    assert settings.resolved_database_url.startswith("sqlite+aiosqlite:///")
    assert settings.resolved_database_url.endswith("data/greenroom.sqlite3")
    assert settings.model.provider == "local"


def test_toml_then_environment_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "greenroom.toml").write_text(
        'data_dir = "from-toml"\n[model]\ntemperature = 0.2\nmax_tokens = 99\n'
    )
    settings = load_settings()
    assert settings.data_dir == Path("from-toml") and settings.model.max_tokens == 99
    monkeypatch.setenv("GREENROOM_DATA_DIR", "/tmp/from-env")
    monkeypatch.setenv("GREENROOM_MODEL__TEMPERATURE", "1.1")
    monkeypatch.setenv("GREENROOM_DATABASE_URL", "postgresql+asyncpg://u@h/db")
    settings = load_settings()
    assert settings.data_dir == Path("/tmp/from-env")
    assert settings.model.temperature == 1.1 and settings.model.max_tokens == 99
    assert settings.resolved_database_url == "postgresql+asyncpg://u@h/db"


def test_config_file_named_by_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text('default_persona = "Juniper"\n')
    monkeypatch.setenv("GREENROOM_CONFIG", str(other))
    assert load_settings().default_persona == "Juniper"


@pytest.mark.parametrize(
    ("env", "value", "expected"),
    [
        ("GREENROOM_MODEL__PROVIDER", "gpt", "model.provider"),
        ("GREENROOM_MODEL__TEMPERATURE", "9", "model.temperature"),
        ("GREENROOM_DATABASE_URL", "mysql://x", "database_url"),
        ("GREENROOM_LOG_LEVEL", "LOUD", "log_level"),
        ("GREENROOM_MEMORY__INDEX_CACHE_SCOPES", "3", "memory.index_cache_scopes"),
        ("GREENROOM_MEMORY__INDEX_CACHE_SCOPES", "many", "memory.index_cache_scopes"),
    ],
)
def test_a_wrong_value_is_one_line_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message
    assert expected in message
    assert message.startswith("invalid setting")


def test_broken_toml_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "greenroom.toml").write_text("data_dir = = 3\n")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "\n" not in str(caught.value)


def test_unknown_key_in_toml_is_refused(tmp_path: Path) -> None:
    (tmp_path / "greenroom.toml").write_text('colour = "green"\n')
    with pytest.raises(ConfigError, match="colour"):
        load_settings()


def test_the_rubric_from_toml_and_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The README's example: a ``[[rubric.dimensions]]`` table replaces the default list."""
    (tmp_path / "greenroom.toml").write_text(
        "[[rubric.dimensions]]\n"
        'name = "fidelity"\n'
        'label = "Persona fidelity"\n'
        'anchors = { 1 = "Breaks character.", 2 = "Clear slip.", 3 = "Generic.", '
        '4 = "In character.", 5 = "Unmistakably them." }\n'
    )
    rubric = load_settings().rubric.rubric()
    assert rubric.names == ("fidelity",) and rubric["fidelity"].anchors[5] == "Unmistakably them."
    monkeypatch.setenv(
        "GREENROOM_RUBRIC__DIMENSIONS",
        '[{"name": "warmth", "label": "Warmth", "anchors": '
        '{"1": "a", "2": "b", "3": "c", "4": "d", "5": "e"}}]',
    )
    assert load_settings().rubric.rubric().names == ("warmth",)
    monkeypatch.setenv("GREENROOM_RUBRIC__DIMENSIONS", '[{"name": "warmth"}]')
    with pytest.raises(ConfigError, match=r"rubric\.dimensions\.0\.label"):
        load_settings()
