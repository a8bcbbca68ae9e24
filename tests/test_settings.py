"""Settings: the layering of DESIGN §2, validation that names the setting, and a default.toml that
documents every key with the model's own default."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from orgcast.errors import SettingsError
from orgcast.settings import Settings

REPO = Path(__file__).resolve().parents[1]
ORGCAST = Path(sys.executable).parent / "orgcast"

DEFAULT = """\
data_dir = "from-default"
[server]
host = "10.1.2.3"
port = 1000
[limits]
max_connections = 5
"""
STAGING = """\
[server]
port = 2000
[limits]
max_connections = 6
"""
EXTRA = """\
[server]
port = 3000
[log]
level = "debug"
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ORGCAST_* variable of the caller's shell takes part in these tests."""
    for name in list(os.environ):
        if name.startswith("ORGCAST_"):
            monkeypatch.delenv(name)


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "config"
    directory.mkdir()
    (directory / "default.toml").write_text(DEFAULT)
    (directory / "staging.toml").write_text(STAGING)
    (tmp_path / "extra.toml").write_text(EXTRA)
    return directory


def test_each_layer_overrides_the_one_below(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = config_dir.parent / "extra.toml"

    base = Settings.load(config_dir=config_dir)
    assert (base.server.host, base.server.port, base.limits.max_connections) == (
        "10.1.2.3",
        1000,
        5,
    )
    assert base.data_dir == Path("from-default")
    assert base.limits.max_message_bytes == 65536  # not in any file: the model default

    monkeypatch.setenv("ORGCAST_ENV", "staging")
    staged = Settings.load(config_dir=config_dir)
    # Sections merge key by key: the overlay changes port, the host from default.toml stays.
    assert (staged.server.host, staged.server.port, staged.limits.max_connections) == (
        "10.1.2.3",
        2000,
        6,
    )

    configured = Settings.load(config=extra, config_dir=config_dir)
    assert (configured.server.port, configured.limits.max_connections) == (3000, 6)
    assert configured.log.level == "DEBUG"

    monkeypatch.setenv("ORGCAST_SERVER__PORT", "4000")
    monkeypatch.setenv("ORGCAST_LIMITS__MAX_CONNECTIONS", "7")
    monkeypatch.setenv("ORGCAST_DATA_DIR", "/srv/orgcast")
    from_env = Settings.load(config=extra, config_dir=config_dir)
    assert (from_env.server.host, from_env.server.port) == ("10.1.2.3", 4000)
    assert from_env.limits.max_connections == 7
    assert from_env.data_dir == Path("/srv/orgcast")
    assert from_env.log.level == "DEBUG"


def test_environment_variables_reach_every_section(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORGCAST_DATABASE__URL", "postgresql+asyncpg://u@db.internal/orgcast")
    monkeypatch.setenv("ORGCAST_REDIS__URL", "redis://cache.internal:6379/1")
    monkeypatch.setenv("ORGCAST_ADMIN__TOKEN", "x" * 32)
    monkeypatch.setenv("ORGCAST_METRICS__ENABLED", "true")
    monkeypatch.setenv("ORGCAST_LOG__LEVEL", "warning")
    monkeypatch.setenv("ORGCAST_LOG__FORMAT", "json")
    monkeypatch.setenv("ORGCAST_SERVER__CORS_ALLOWED_ORIGINS", '["https://a.example"]')
    settings = Settings.load(config_dir=config_dir)
    assert settings.database_url == "postgresql+asyncpg://u@db.internal/orgcast"
    assert not settings.is_sqlite
    assert settings.redis.url == "redis://cache.internal:6379/1"
    assert settings.admin.token == "x" * 32
    assert settings.metrics.enabled is True
    assert (settings.log.level, settings.log.format) == ("WARNING", "json")
    assert settings.server.cors_allowed_origins == ["https://a.example"]


def test_an_empty_database_url_means_the_sqlite_file_under_data_dir(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ORGCAST_DATA_DIR", str(tmp_path / "state"))
    settings = Settings.load(config_dir=config_dir)
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path / 'state' / 'orgcast.sqlite3'}"
    assert settings.is_sqlite


def test_a_missing_env_overlay_is_optional_but_a_missing_config_file_is_an_error(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORGCAST_ENV", "production")
    assert Settings.load(config_dir=config_dir).server.port == 1000
    with pytest.raises(SettingsError) as missing:
        Settings.load(config=config_dir / "nope.toml", config_dir=config_dir)
    assert str(missing.value) == f"--config: no such file: {config_dir / 'nope.toml'}"


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("ORGCAST_SERVER__PORT", "abc", "server.port (ORGCAST_SERVER__PORT)"),
        ("ORGCAST_SERVER__PORT", "70000", "server.port (ORGCAST_SERVER__PORT)"),
        ("ORGCAST_DATABASE__URL", "mysql://db/orgcast", "database.url (ORGCAST_DATABASE__URL)"),
        ("ORGCAST_REDIS__URL", "http://cache", "redis.url (ORGCAST_REDIS__URL)"),
        ("ORGCAST_ADMIN__TOKEN", "short", "admin.token (ORGCAST_ADMIN__TOKEN)"),
        ("ORGCAST_LOG__FORMAT", "xml", "log.format (ORGCAST_LOG__FORMAT)"),
        ("ORGCAST_LIMITS__MAX_CONNECTIONS", "0", "limits.max_connections"),
        ("ORGCAST_SERVER__PORTT", "1", "server.portt (ORGCAST_SERVER__PORTT)"),
    ],
)
def test_a_bad_environment_value_is_refused_naming_the_setting(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as refused:
        Settings.load(config_dir=config_dir)
    lines = str(refused.value).splitlines()
    assert lines[0] == "invalid settings:"
    assert len(lines) == 2
    assert lines[1].startswith(f"  {named}")


def test_a_bad_or_unknown_key_in_a_file_is_refused_naming_it(config_dir: Path) -> None:
    overlay = config_dir.parent / "bad.toml"
    overlay.write_text('[database]\nurl = "mysql://db/orgcast"\n[server]\nportt = 1\n')
    with pytest.raises(SettingsError) as refused:
        Settings.load(config=overlay, config_dir=config_dir)
    message = str(refused.value)
    assert "  database.url (ORGCAST_DATABASE__URL): Value error, must be empty" in message
    assert "  server.portt (ORGCAST_SERVER__PORTT): Extra inputs are not permitted" in message


def test_a_malformed_toml_file_is_refused(config_dir: Path) -> None:
    overlay = config_dir.parent / "broken.toml"
    overlay.write_text("[server\nport = 1\n")
    with pytest.raises(SettingsError) as refused:
        Settings.load(config=overlay, config_dir=config_dir)
    assert str(refused.value).startswith("configuration could not be read: ")


# -- the process refuses to start ----------------------------------------------------------------


def serve(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ORGCAST_")}
    environment.update(ORGCAST_DATA_DIR=str(tmp_path / "data"), **env)
    return subprocess.run(
        [str(ORGCAST), "serve", "--port", "0", *args],
        cwd=tmp_path,
        env=environment,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"ORGCAST_SERVER__PORT": "abc"}, "server.port (ORGCAST_SERVER__PORT)"),
        ({"ORGCAST_DATABASE__URL": "mysql://db/x"}, "database.url (ORGCAST_DATABASE__URL)"),
        ({"ORGCAST_LOG__LEVEL": "loud"}, "log.level (ORGCAST_LOG__LEVEL)"),
    ],
)
def test_serve_with_a_bad_value_exits_1_naming_the_setting(
    tmp_path: Path, env: dict[str, str], named: str
) -> None:
    done = serve(tmp_path, **env)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith(f"orgcast: invalid settings:\n  {named}: ")
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "data").exists()


def test_serve_with_a_bad_config_file_exits_1_naming_the_setting(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text('[database]\nurl = "mysql://db/x"\n')
    done = serve(tmp_path, "--config", "bad.toml")
    assert done.returncode == 1
    assert done.stderr.startswith(
        "orgcast: invalid settings:\n  database.url (ORGCAST_DATABASE__URL): "
    )
    missing = serve(tmp_path, "--config", "nope.toml")
    assert (missing.returncode, missing.stderr) == (
        1,
        "orgcast: --config: no such file: nope.toml\n",
    )


# -- config/default.toml ------------------------------------------------------------------------


def model_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(model_keys(annotation, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def file_keys(data: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for name, value in data.items():
        if isinstance(value, dict):
            keys.extend(file_keys(value, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def test_default_toml_lists_every_setting_under_its_section_and_nothing_else() -> None:
    data = tomllib.loads((REPO / "config" / "default.toml").read_text())
    assert sorted(file_keys(data)) == sorted(model_keys(Settings))


def test_default_toml_values_equal_the_model_defaults() -> None:
    data = tomllib.loads((REPO / "config" / "default.toml").read_text())
    assert data == Settings().model_dump(mode="json")
    assert Settings.load(config_dir=REPO / "config") == Settings()


def test_default_toml_documents_every_section_and_the_layering() -> None:
    text = (REPO / "config" / "default.toml").read_text()
    lines = text.splitlines()
    assert "ORGCAST_<SECTION>__<KEY>" in text
    for section in [key for key in Settings.model_fields if key != "data_dir"]:
        index = lines.index(f"[{section}]")
        assert lines[index + 1].startswith("# "), f"[{section}] has no comment"
