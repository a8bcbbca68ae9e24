"""Typed settings, built once before the event loop starts and passed in.

Layering, lowest to highest: the defaults below (``config/default.toml`` mirrors and documents
them), ``config/default.toml``, ``config/<ORGCAST_ENV>.toml``, an explicit ``--config FILE``
overlay, then environment variables ``ORGCAST_<SECTION>__<KEY>``.

``Settings(...)`` constructed directly reads nothing but its arguments, so tests build exactly the
settings they mean; ``Settings.load()`` applies the whole layering.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .errors import SettingsError

_layered_files: ContextVar[tuple[Path, ...] | None] = ContextVar("_layered_files", default=None)

REPO_ROOT = Path(__file__).resolve().parents[2]


class Section(BaseModel):
    """A settings section: a misspelt key is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class ServerSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    public_url: str = ""
    max_packet_bytes: int = Field(1_048_576, ge=1024)
    websocket_compression: bool = False
    direct_fanout: bool = True
    cors_allowed_origins: list[str] = Field(default_factory=list)
    ping_interval: float = Field(25.0, gt=0)
    ping_timeout: float = Field(20.0, gt=0)
    use_uvloop: bool = True
    gc_young_threshold: int = Field(20_000, ge=0, le=10_000_000)
    malloc_trim: bool = True
    malloc_trim_after_sockets: int = Field(200, ge=1)
    unauthenticated_timeout_seconds: float = Field(10.0, gt=0)
    max_unauthenticated: int = Field(1000, ge=1)
    shutdown_timeout_seconds: float = Field(10.0, ge=0)
    max_header_bytes: int = Field(16_384, ge=8190, le=1_048_576)
    connects_per_address: float = Field(100, gt=0)


class DatabaseSettings(Section):
    url: str = ""
    pool_size: int = Field(10, ge=1)
    echo: bool = False
    connect_timeout: float = Field(5.0, gt=0)
    command_timeout: float = Field(10.0, gt=0)
    watch_interval_seconds: float = Field(1.0, gt=0)

    @field_validator("url")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        if value and not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("must be empty, sqlite+aiosqlite:///PATH or postgresql+asyncpg://...")
        return value


class RedisSettings(Section):
    url: str = ""
    channel: str = Field("orgcast", min_length=1, max_length=100)
    node_ttl_seconds: float = Field(10.0, ge=1, le=3600)

    @field_validator("url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be empty or a redis:// URL")
        return value


class AdminSettings(Section):
    token: str = ""

    @field_validator("token")
    @classmethod
    def _long_enough(cls, value: str) -> str:
        if value and len(value) < 16:
            raise ValueError("must be at least 16 characters (or empty to generate one)")
        return value


class LimitsSettings(Section):
    """Tenant defaults; each tenant may override any of them."""

    max_connections: int = Field(10_000, ge=1)
    max_message_bytes: int = Field(65_536, ge=1)
    max_rooms_per_connection: int = Field(100, ge=1)
    messages_per_second: float = Field(50, gt=0)
    connection_rate: float = Field(10, gt=0)
    history_retention_days: int = Field(30, ge=1)
    api_requests_per_second: float = Field(100, gt=0)


class AuthSettings(Section):
    """Client tokens on live sockets."""

    refresh_window_seconds: float = Field(60.0, ge=0, le=86_400)


class MessagesSettings(Section):
    history_page: int = Field(100, ge=1, le=1000)
    replay_page: int = Field(1000, ge=1, le=100_000)
    replay_max_bytes: int = Field(1_048_576, ge=1024)
    batch_max_size: int = Field(256, ge=1)
    batch_max_delay_ms: float = Field(0.0, ge=0)
    queue_max: int = Field(10_000, ge=1)
    retention_interval_seconds: float = Field(3600, gt=0)
    retention_batch: int = Field(5000, ge=1)
    gap_wait_ms: float = Field(200, ge=0, le=60_000)
    gap_poll_seconds: float = Field(1.0, gt=0, le=3600)


class WebhooksSettings(Section):
    """Delivery of events to tenants' endpoints (see services/webhooks.py)."""

    presence_grace_seconds: float = Field(3.0, ge=0, le=3600)
    max_batch: int = Field(100, ge=1, le=1000)
    timeout_seconds: float = Field(5.0, gt=0, le=300)
    max_age_hours: float = Field(24.0, gt=0)
    disable_after_hours: float = Field(72.0, gt=0)
    keep_days: float = Field(7.0, gt=0)
    rotation_overlap_hours: float = Field(24.0, ge=0)
    allow_private_targets: bool = False
    max_endpoints_per_tenant: int = Field(10, ge=1, le=1000)
    retry_schedule_seconds: list[float] = Field(
        default_factory=lambda: [5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 7200.0],
        min_length=1,
    )
    retry_jitter: float = Field(0.2, ge=0, le=1)
    poll_interval_seconds: float = Field(1.0, gt=0, le=60)
    max_in_flight: int = Field(64, ge=1, le=10_000)
    endpoint_concurrency: int = Field(4, ge=1, le=100)

    @field_validator("retry_schedule_seconds")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if any(delay <= 0 for delay in value):
            raise ValueError("every delay must be above 0 seconds")
        return value


class MetricsSettings(Section):
    enabled: bool = True
    token: str = ""
    max_tenant_labels: int = Field(100, ge=1, le=10_000)
    loop_lag_interval_seconds: float = Field(0.5, gt=0, le=60)

    @field_validator("token")
    @classmethod
    def _long_enough(cls, value: str) -> str:
        if value and len(value) < 16:
            raise ValueError("must be at least 16 characters (or empty: the admin token only)")
        return value


class LogSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"
    access: bool = True

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class Settings(BaseSettings):
    """Every setting of an orgcast node."""

    model_config = SettingsConfigDict(
        env_prefix="ORGCAST_",
        env_nested_delimiter="__",
        extra="forbid",
        nested_model_default_partial_update=True,
    )

    data_dir: Path = Path("data")
    server: ServerSettings = Field(default_factory=ServerSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    messages: MessagesSettings = Field(default_factory=MessagesSettings)
    webhooks: WebhooksSettings = Field(default_factory=WebhooksSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    log: LogSettings = Field(default_factory=LogSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        files = _layered_files.get()
        if files is None:
            return (init_settings,)
        toml = TomlConfigSettingsSource(settings_cls, toml_file=list(files), deep_merge=True)
        return (init_settings, env_settings, toml)

    @classmethod
    def load(cls, config: Path | None = None, config_dir: Path | None = None) -> Settings:
        """Build settings from the TOML layers and the environment; raises ``SettingsError``."""
        directory = config_dir or Path(os.environ.get("ORGCAST_CONFIG_DIR", "config"))
        if not directory.is_dir() and (REPO_ROOT / "config").is_dir():
            directory = REPO_ROOT / "config"
        files = [directory / "default.toml"]
        env_name = os.environ.get("ORGCAST_ENV", "")
        if env_name:
            files.append(directory / f"{env_name}.toml")
        if config is not None:
            if not config.is_file():
                raise SettingsError(f"--config: no such file: {config}")
            files.append(config)
        token = _layered_files.set(tuple(files))
        try:
            return cls()
        except ValidationError as exc:
            raise SettingsError(describe_validation_error(exc)) from None
        except (ValueError, OSError) as exc:  # a malformed TOML file
            raise SettingsError(f"configuration could not be read: {exc}") from None
        finally:
            _layered_files.reset(token)

    @property
    def database_url(self) -> str:
        """The effective database URL: empty means the embedded SQLite file under ``data_dir``."""
        if self.database.url:
            return self.database.url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'orgcast.sqlite3').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def describe_validation_error(exc: ValidationError) -> str:
    lines = ["invalid settings:"]
    for error in exc.errors():
        name = ".".join(str(part) for part in error["loc"])
        env = "ORGCAST_" + "__".join(str(part).upper() for part in error["loc"])
        lines.append(f"  {name} ({env}): {error['msg']}")
    return "\n".join(lines)
