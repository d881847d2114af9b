"""Configuration: one frozen dataclass, read from environment variables only."""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ValueError):
    """An environment variable holds a value the server cannot use."""


@dataclass(frozen=True, slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str = DEFAULT_REDIS_URL
    redis_prefix: str = "tubelet"
    storage_dir: Path = Path("storage")
    jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    jwt_algorithm: str = "HS256"
    access_token_ttl: int = 15 * 60
    refresh_token_ttl: int = 30 * 24 * 3600
    bcrypt_rounds: int = 12
    max_upload_bytes: int = 4 * 1024**3
    stream_cache_seconds: int = 3600
    allowed_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[Network, ...] = ()
    view_min_watch: float = 10.0
    view_window: int = 3600
    view_ip_limit: int = 30
    view_flush_interval: float = 5.0
    presence_ttl: float = 45.0
    heartbeat: float = 20.0
    log_level: str = "INFO"
    access_log: bool = True
    db_pool_size: int = 10
    db_timeout: float = 5.0
    bcrypt_concurrency: int = 2
    auth_rate_limit: int = 10
    auth_rate_window: int = 60
    presence_max_per_address: int = 32
    header_timeout: float = 10.0
    dev_mode: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        env = os.environ if env is None else env
        base = cls()
        secret = env.get("JWT_SECRET") or base.jwt_secret
        if len(secret.encode()) < 32:
            raise ConfigError("JWT_SECRET must be at least 32 bytes")
        algorithm = env.get("JWT_ALGORITHM", base.jwt_algorithm)
        if algorithm not in {"HS256", "HS384", "HS512"}:
            raise ConfigError("JWT_ALGORITHM must be one of HS256, HS384, HS512")
        return cls(
            host=env.get("HOST", base.host),
            port=_int(env, "PORT", base.port, low=0, high=65535),
            workers=_int(env, "WORKERS", base.workers, low=1, high=256),
            database_url=env.get("DATABASE_URL") or base.database_url,
            redis_url=env.get("REDIS_URL") or base.redis_url,
            redis_prefix=env.get("REDIS_PREFIX") or base.redis_prefix,
            storage_dir=Path(env.get("STORAGE_DIR") or base.storage_dir),
            jwt_secret=secret,
            jwt_algorithm=algorithm,
            access_token_ttl=_int(env, "ACCESS_TOKEN_TTL", base.access_token_ttl, low=1),
            refresh_token_ttl=_int(env, "REFRESH_TOKEN_TTL", base.refresh_token_ttl, low=1),
            bcrypt_rounds=_int(env, "BCRYPT_ROUNDS", base.bcrypt_rounds, low=4, high=16),
            max_upload_bytes=_int(env, "MAX_UPLOAD_BYTES", base.max_upload_bytes, low=1),
            stream_cache_seconds=_int(
                env, "STREAM_CACHE_SECONDS", base.stream_cache_seconds, low=0
            ),
            allowed_origins=_list(env.get("ALLOWED_ORIGINS", "")),
            trusted_proxies=_networks(env.get("TRUSTED_PROXIES", "")),
            view_min_watch=_float(env, "VIEW_MIN_WATCH", base.view_min_watch, low=0.1),
            view_window=_int(env, "VIEW_WINDOW", base.view_window, low=1),
            view_ip_limit=_int(env, "VIEW_IP_LIMIT", base.view_ip_limit, low=1),
            view_flush_interval=_float(
                env, "VIEW_FLUSH_INTERVAL", base.view_flush_interval, low=0.05
            ),
            presence_ttl=_float(env, "PRESENCE_TTL", base.presence_ttl, low=1),
            heartbeat=_float(env, "HEARTBEAT", base.heartbeat, low=0.5),
            log_level=env.get("LOG_LEVEL", base.log_level).upper(),
            access_log=env.get("ACCESS_LOG", "1").strip().lower() not in {"0", "false", "no"},
            db_pool_size=_int(env, "DB_POOL_SIZE", base.db_pool_size, low=1, high=1000),
            db_timeout=_float(env, "DB_TIMEOUT", base.db_timeout, low=0.1),
            bcrypt_concurrency=_int(env, "BCRYPT_CONCURRENCY", base.bcrypt_concurrency,
                                    low=1, high=256),
            auth_rate_limit=_int(env, "AUTH_RATE_LIMIT", base.auth_rate_limit, low=1),
            auth_rate_window=_int(env, "AUTH_RATE_WINDOW", base.auth_rate_window, low=1),
            presence_max_per_address=_int(env, "PRESENCE_MAX_PER_ADDRESS",
                                          base.presence_max_per_address, low=1),
            header_timeout=_float(env, "HEADER_TIMEOUT", base.header_timeout, low=0.1),
        )


def _int(env: Mapping[str, str], name: str, default: int, *, low: int = 0,
         high: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < low or (high is not None and value > high):
        raise ConfigError(f"{name} out of range: {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, *, low: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not value >= low:
        raise ConfigError(f"{name} must be at least {low}")
    return value


def _list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip().rstrip("/") for item in raw.split(",") if item.strip())


def _networks(raw: str) -> tuple[Network, ...]:
    try:
        return tuple(ipaddress.ip_network(item, strict=False) for item in _list(raw))
    except ValueError as exc:
        raise ConfigError(f"TRUSTED_PROXIES: {exc}") from None
