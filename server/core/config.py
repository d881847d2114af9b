"""Configuration: one frozen dataclass, read from environment variables only."""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import ipaddress
import os
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .storage import StorageLocation, parse_storage_url

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow",
                "slower", "veryslow")


@dataclass(frozen=True, slots=True)
class RateSpec:
    """At most `count` actions in any `window` seconds."""

    count: int
    window: int

    def __str__(self) -> str:
        return f"{self.count}/{self.window}"


class ConfigError(ValueError):
    """An environment variable holds a value the server cannot use."""


@dataclass(frozen=True, slots=True)
class Variable:
    """One environment variable: the Config field it sets and what it means."""

    name: str
    field: str
    meaning: str
    # Shown by --help instead of the field's own default.
    default: str | None = None


# Every variable the server reads, in the order `python -m server --help` lists
# them; from_env cannot read a variable missing here.
ENVIRONMENT: tuple[Variable, ...] = (
    Variable("HOST", "host", "address to listen on"),
    Variable("PORT", "port", "port to listen on"),
    Variable("WORKERS", "workers", "processes sharing the port (SO_REUSEPORT)"),
    Variable("EVENT_LOOP", "event_loop",
             "asyncio, or uvloop for libuv's loop (serving processes and the worker)"),
    Variable("DATABASE_URL", "database_url", "PostgreSQL"),
    Variable("REDIS_URL", "redis_url", "Redis"),
    Variable("REDIS_PREFIX", "redis_prefix", "namespace of every Redis key and channel"),
    Variable("STORAGE_DIR", "storage_dir",
             "where media lives with file storage; with S3, this node's scratch space "
             "(unfinished uploads, processing)"),
    Variable("STORAGE_URL", "storage", "file:///path or s3://BUCKET[/prefix]?endpoint=URL"
             "&region=NAME (credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)",
             "file storage in STORAGE_DIR"),
    Variable("CACHE_DIR", "cache_dir", "this node's read-through cache of S3 media",
             "STORAGE_DIR/cache"),
    Variable("CACHE_MAX_BYTES", "cache_max_bytes",
             "bytes the node's cache may hold; least recently used files go first"),
    Variable("STREAM_REDIRECT", "stream_redirect",
             "presigned: answer stream requests with a 302 to a presigned bucket URL", "empty"),
    Variable("JWT_SECRET", "jwt_secret", "HMAC key for access tokens, at least 32 bytes",
             "random per start, with a warning (kept in .data/ under make run)"),
    Variable("JWT_ALGORITHM", "jwt_algorithm", "the only algorithm accepted (HS256/384/512)"),
    Variable("ACCESS_TOKEN_TTL", "access_token_ttl", "access token lifetime, seconds"),
    Variable("REFRESH_TOKEN_TTL", "refresh_token_ttl", "refresh token lifetime, seconds"),
    Variable("BCRYPT_ROUNDS", "bcrypt_rounds", "bcrypt cost"),
    Variable("BCRYPT_CONCURRENCY", "bcrypt_concurrency", "passwords hashed at once"),
    Variable("BCRYPT_MAX_WAITING", "bcrypt_max_waiting",
             "password checks that may wait for a hashing slot; more get 503"),
    Variable("AUTH_RATE_LIMIT", "auth_rate_limit",
             "login and register attempts per address (and per account) per window"),
    Variable("AUTH_RATE_WINDOW", "auth_rate_window", "that window, seconds"),
    Variable("LOGIN_DAILY_LIMIT", "login_daily_limit",
             "failed sign-ins per account per day; past that, the account's sign-ins wait"),
    Variable("RATE_LIMIT_COMMENT", "rate_limit_comment",
             "comments per account (and per address) per window, as COUNT/SECONDS"),
    Variable("RATE_LIMIT_REACTION", "rate_limit_reaction",
             "reactions and subscriptions per account (and per address), COUNT/SECONDS"),
    Variable("RATE_LIMIT_REPORT", "rate_limit_report",
             "reports per account (and per address), COUNT/SECONDS"),
    Variable("RATE_LIMIT_UPLOAD", "rate_limit_upload",
             "uploads begun per account (and per address), COUNT/SECONDS"),
    Variable("COMMENT_MAX_LENGTH", "comment_max_length", "longest comment, characters"),
    Variable("STREAM_URL_TTL", "stream_url_ttl",
             "seconds a signed stream URL of a private video stays valid"),
    Variable("SEARCH_LANGUAGE", "search_language",
             "PostgreSQL text-search configuration for stemming new videos and queries"),
    Variable("TRENDING_REFRESH", "trending_refresh",
             "seconds between recomputations of the trending ranking"),
    Variable("LIVEKIT_URL", "livekit_url",
             "the LiveKit server (wss://...) rooms' media go through; unset: rooms without "
             "a media server", "empty"),
    Variable("LIVEKIT_API_KEY", "livekit_api_key",
             "LiveKit API key: signs tokens, checks webhooks"),
    Variable("LIVEKIT_API_SECRET", "livekit_api_secret", "LiveKit API secret",
             "derived from JWT_SECRET"),
    Variable("LIVEKIT_TOKEN_TTL", "livekit_token_ttl", "seconds a room's join token stays valid"),
    Variable("ROOMS_GUESTS", "rooms_guests",
             "1: people not signed in may join rooms to watch, listen and chat", "0"),
    Variable("RATE_LIMIT_CHAT", "rate_limit_chat",
             "chat messages per participant (and per address), COUNT/SECONDS"),
    Variable("MAX_UPLOAD_BYTES", "max_upload_bytes", "largest accepted video file"),
    Variable("UPLOAD_EXPIRY", "upload_expiry",
             "seconds an unfinished resumable upload is kept after its last byte arrived"),
    Variable("STREAM_CACHE_SECONDS", "stream_cache_seconds", "max-age sent with media"),
    Variable("ALLOWED_ORIGINS", "allowed_origins",
             "comma-separated origins besides our own that may open the viewer socket "
             "and post progress; * allows any", "empty"),
    Variable("TRUSTED_PROXIES", "trusted_proxies",
             "comma-separated addresses or CIDRs whose X-Forwarded-For is believed", "empty"),
    Variable("VIEW_MIN_WATCH", "view_min_watch",
             "seconds of playback that make a view (half the duration if shorter)"),
    Variable("VIEW_WINDOW", "view_window", "seconds in which one viewer adds one view"),
    Variable("VIEW_IP_LIMIT", "view_ip_limit", "views one address may add per hour"),
    Variable("VIEW_FLUSH_INTERVAL", "view_flush_interval",
             "seconds between flushes of counted views to PostgreSQL"),
    Variable("PRESENCE_TTL", "presence_ttl",
             "seconds a viewer of a vanished process still counts"),
    Variable("PRESENCE_MAX_PER_ADDRESS", "presence_max_per_address",
             "viewer sockets one address may hold open"),
    Variable("HEARTBEAT", "heartbeat", "WebSocket ping interval, seconds"),
    Variable("DB_POOL_SIZE", "db_pool_size", "PostgreSQL connections per process"),
    Variable("DB_TIMEOUT", "db_timeout",
             "seconds to wait for a PostgreSQL connection or statement before a 503"),
    Variable("HEADER_TIMEOUT", "header_timeout",
             "seconds a client has to send a request's headers"),
    Variable("MAX_VIDEO_DURATION", "max_video_duration",
             "longest accepted video, seconds; longer uploads fail processing"),
    Variable("MAX_VIDEO_PIXELS", "max_video_pixels",
             "largest accepted picture, width times height (no side over 16384)"),
    Variable("TRANSCODE_MAX_HEIGHT", "transcode_max_height",
             "videos are scaled to fit a 16:9 box this many lines high (turned for portrait)"),
    Variable("TRANSCODE_CRF", "transcode_crf", "x264 constant rate factor (0-51, lower is better)"),
    Variable("TRANSCODE_PRESET", "transcode_preset", "x264 preset (ultrafast ... veryslow)"),
    Variable("FFMPEG_THREADS", "ffmpeg_threads", "threads one ffmpeg run may use"),
    Variable("FFMPEG_TIMEOUT", "ffmpeg_timeout",
             "seconds one ffmpeg run may take, besides the allowance per second of video"),
    Variable("FFMPEG_TIMEOUT_PER_SECOND", "ffmpeg_timeout_per_second",
             "seconds of processing allowed per second of video"),
    Variable("FFMPEG_MEMORY_BYTES", "ffmpeg_memory_bytes",
             "address-space limit of one ffmpeg or ffprobe run, bytes"),
    Variable("WORKER_CONCURRENCY", "worker_concurrency",
             "processing jobs one worker runs at once (python -m server worker)"),
    Variable("WORKER_STALLED_AFTER", "worker_stalled_after",
             "seconds without a heartbeat after which a worker's jobs are run again"),
    Variable("PROCESSING_RETRY_WAIT", "processing_retry_wait",
             "seconds before a processing job that failed for a transient reason is retried "
             "(four times that before its last try)"),
    Variable("LOG_LEVEL", "log_level", "logging level"),
    Variable("LOG_FORMAT", "log_format",
             "text, or json for one JSON object per line (access lines with a request id)"),
    Variable("METRICS_TOKEN", "metrics_token",
             "bearer token GET /metrics requires; with it, /metrics answers on PORT", "none"),
    Variable("METRICS_PORT", "metrics_port",
             "serve /metrics on this port only, not on PORT (a worker serves its own here)",
             "none; with no METRICS_TOKEN either, /metrics answers 404"),
    Variable("ACCESS_LOG", "access_log", "0 turns the access log off", "1"),
)
_DECLARED = frozenset(variable.name for variable in ENVIRONMENT)


@dataclass(frozen=True, slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    event_loop: str = "asyncio"
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str = DEFAULT_REDIS_URL
    redis_prefix: str = "tubelet"
    storage_dir: Path = Path("storage")
    # None: file storage in storage_dir.
    storage: StorageLocation | None = None
    cache_dir: Path | None = None
    cache_max_bytes: int = 10 * 1024**3
    stream_redirect: str = ""
    jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    jwt_algorithm: str = "HS256"
    access_token_ttl: int = 15 * 60
    refresh_token_ttl: int = 30 * 24 * 3600
    bcrypt_rounds: int = 12
    max_upload_bytes: int = 4 * 1024**3
    upload_expiry: int = 24 * 3600
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
    log_format: str = "text"
    access_log: bool = True
    metrics_token: str | None = field(default=None, repr=False)
    metrics_port: int | None = None
    db_pool_size: int = 10
    db_timeout: float = 5.0
    bcrypt_concurrency: int = 2
    bcrypt_max_waiting: int = 32
    auth_rate_limit: int = 10
    auth_rate_window: int = 60
    presence_max_per_address: int = 32
    header_timeout: float = 10.0
    max_video_duration: float = 6 * 3600.0
    max_video_pixels: int = 8192 * 8192
    transcode_max_height: int = 1080
    transcode_crf: int = 23
    transcode_preset: str = "veryfast"
    ffmpeg_threads: int = 2
    ffmpeg_timeout: float = 300.0
    ffmpeg_timeout_per_second: float = 4.0
    ffmpeg_memory_bytes: int = 2 * 1024**3
    worker_concurrency: int = 1
    worker_stalled_after: float = 30.0
    processing_retry_wait: float = 10.0
    login_daily_limit: int = 50
    rate_limit_comment: RateSpec = RateSpec(10, 60)
    rate_limit_reaction: RateSpec = RateSpec(60, 60)
    rate_limit_report: RateSpec = RateSpec(10, 3600)
    rate_limit_upload: RateSpec = RateSpec(20, 3600)
    comment_max_length: int = 5000
    stream_url_ttl: int = 6 * 3600
    search_language: str = "english"
    trending_refresh: float = 300.0
    livekit_url: str | None = None
    livekit_api_key: str = "tubelet"
    # None: derived from jwt_secret, so every instance agrees without more configuration.
    livekit_api_secret: str | None = field(default=None, repr=False)
    livekit_token_ttl: int = 3600
    rooms_guests: bool = False
    rate_limit_chat: RateSpec = RateSpec(10, 10)

    @property
    def livekit_secret(self) -> str:
        """The LiveKit API secret: LIVEKIT_API_SECRET, or one derived from JWT_SECRET."""
        if self.livekit_api_secret is not None:
            return self.livekit_api_secret
        return hmac.new(self.jwt_secret.encode(), b"tubelet livekit api secret",
                        hashlib.sha256).hexdigest()

    @property
    def node_cache_dir(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else self.storage_dir / "cache"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        env = _Declared(os.environ if env is None else env)
        base = cls()
        secret = env.get("JWT_SECRET") or base.jwt_secret
        if len(secret.encode()) < 32:
            raise ConfigError("JWT_SECRET must be at least 32 bytes")
        if env.get("STREAM_REDIRECT", "").strip() and _storage(env) is None:
            raise ConfigError("STREAM_REDIRECT=presigned needs S3 storage (STORAGE_URL=s3://...)")
        algorithm = env.get("JWT_ALGORITHM", base.jwt_algorithm)
        if algorithm not in {"HS256", "HS384", "HS512"}:
            raise ConfigError("JWT_ALGORITHM must be one of HS256, HS384, HS512")
        return cls(
            host=env.get("HOST", base.host),
            port=_int(env, "PORT", base.port, low=0, high=65535),
            workers=_int(env, "WORKERS", base.workers, low=1, high=256),
            event_loop=_event_loop(env, base.event_loop),
            database_url=env.get("DATABASE_URL") or base.database_url,
            redis_url=env.get("REDIS_URL") or base.redis_url,
            redis_prefix=env.get("REDIS_PREFIX") or base.redis_prefix,
            storage_dir=_storage_dir(env, base.storage_dir),
            storage=_storage(env),
            cache_dir=Path(env["CACHE_DIR"]) if env.get("CACHE_DIR") else None,
            cache_max_bytes=_int(env, "CACHE_MAX_BYTES", base.cache_max_bytes, low=0),
            stream_redirect=_choice(env, "STREAM_REDIRECT", "", STREAM_REDIRECTS),
            jwt_secret=secret,
            jwt_algorithm=algorithm,
            access_token_ttl=_int(env, "ACCESS_TOKEN_TTL", base.access_token_ttl, low=1),
            refresh_token_ttl=_int(env, "REFRESH_TOKEN_TTL", base.refresh_token_ttl, low=1),
            bcrypt_rounds=_int(env, "BCRYPT_ROUNDS", base.bcrypt_rounds, low=4, high=16),
            max_upload_bytes=_int(env, "MAX_UPLOAD_BYTES", base.max_upload_bytes, low=1),
            livekit_url=_livekit_url(env.get("LIVEKIT_URL", "")),
            livekit_api_key=(env.get("LIVEKIT_API_KEY") or base.livekit_api_key).strip(),
            livekit_api_secret=(env.get("LIVEKIT_API_SECRET") or "").strip() or None,
            livekit_token_ttl=_int(env, "LIVEKIT_TOKEN_TTL", base.livekit_token_ttl,
                                   low=60, high=24 * 3600),
            rooms_guests=env.get("ROOMS_GUESTS", "0").strip().lower() in {"1", "true", "yes"},
            rate_limit_chat=_rate(env, "RATE_LIMIT_CHAT", base.rate_limit_chat),
            upload_expiry=_int(env, "UPLOAD_EXPIRY", base.upload_expiry, low=1),
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
            log_level=_choice(env, "LOG_LEVEL", base.log_level, LOG_LEVELS).upper(),
            log_format=_choice(env, "LOG_FORMAT", base.log_format, LOG_FORMATS),
            metrics_token=_metrics_token(env.get("METRICS_TOKEN", "")),
            metrics_port=_int(env, "METRICS_PORT", 0, low=1, high=65535) or None,
            access_log=env.get("ACCESS_LOG", "1").strip().lower() not in {"0", "false", "no"},
            db_pool_size=_int(env, "DB_POOL_SIZE", base.db_pool_size, low=1, high=1000),
            db_timeout=_float(env, "DB_TIMEOUT", base.db_timeout, low=0.1),
            bcrypt_concurrency=_int(env, "BCRYPT_CONCURRENCY", base.bcrypt_concurrency,
                                    low=1, high=256),
            bcrypt_max_waiting=_int(env, "BCRYPT_MAX_WAITING", base.bcrypt_max_waiting,
                                    low=0, high=100_000),
            auth_rate_limit=_int(env, "AUTH_RATE_LIMIT", base.auth_rate_limit, low=1),
            auth_rate_window=_int(env, "AUTH_RATE_WINDOW", base.auth_rate_window, low=1),
            presence_max_per_address=_int(env, "PRESENCE_MAX_PER_ADDRESS",
                                          base.presence_max_per_address, low=1),
            header_timeout=_float(env, "HEADER_TIMEOUT", base.header_timeout, low=0.1),
            max_video_duration=_float(env, "MAX_VIDEO_DURATION", base.max_video_duration,
                                      low=1),
            max_video_pixels=_int(env, "MAX_VIDEO_PIXELS", base.max_video_pixels, low=4),
            transcode_max_height=_int(env, "TRANSCODE_MAX_HEIGHT", base.transcode_max_height,
                                      low=16, high=16384),
            transcode_crf=_int(env, "TRANSCODE_CRF", base.transcode_crf, low=0, high=51),
            transcode_preset=_choice(env, "TRANSCODE_PRESET", base.transcode_preset,
                                     X264_PRESETS),
            ffmpeg_threads=_int(env, "FFMPEG_THREADS", base.ffmpeg_threads, low=1, high=64),
            ffmpeg_timeout=_float(env, "FFMPEG_TIMEOUT", base.ffmpeg_timeout, low=1),
            ffmpeg_timeout_per_second=_float(env, "FFMPEG_TIMEOUT_PER_SECOND",
                                             base.ffmpeg_timeout_per_second, low=0),
            ffmpeg_memory_bytes=_int(env, "FFMPEG_MEMORY_BYTES", base.ffmpeg_memory_bytes,
                                     low=64 * 1024**2),
            worker_concurrency=_int(env, "WORKER_CONCURRENCY", base.worker_concurrency,
                                    low=1, high=64),
            worker_stalled_after=_float(env, "WORKER_STALLED_AFTER", base.worker_stalled_after,
                                        low=1),
            processing_retry_wait=_float(env, "PROCESSING_RETRY_WAIT",
                                         base.processing_retry_wait, low=0),
        )


class _Declared(Mapping[str, str]):
    """The environment as from_env sees it: reading an undescribed variable is a bug."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def __getitem__(self, name: str) -> str:
        if name not in _DECLARED:
            raise RuntimeError(f"{name} is read but missing from config.ENVIRONMENT")
        return self._env[name]

    def __iter__(self) -> Iterator[str]:
        return (name for name in self._env if name in _DECLARED)

    def __len__(self) -> int:
        return sum(1 for _ in self)


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


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("text", "json")
STREAM_REDIRECTS = ("", "presigned")
EVENT_LOOPS = ("asyncio", "uvloop")


def _storage(env: Mapping[str, str]) -> StorageLocation | None:
    """The S3 location STORAGE_URL names; None for file storage (STORAGE_DIR)."""
    raw = env.get("STORAGE_URL", "").strip()
    if not raw:
        return None
    try:
        location = parse_storage_url(raw)
    except ValueError as exc:
        raise ConfigError(f"STORAGE_URL: {exc}") from None
    return location if location.is_s3 else None


def _storage_dir(env: Mapping[str, str], default: Path) -> Path:
    """STORAGE_DIR, or the directory of a file:// STORAGE_URL, which names the same place."""
    raw = env.get("STORAGE_URL", "").strip()
    if raw.startswith("file:"):
        try:
            location = parse_storage_url(raw)
        except ValueError as exc:
            raise ConfigError(f"STORAGE_URL: {exc}") from None
        assert location.path is not None
        return location.path
    return Path(env.get("STORAGE_DIR") or default)


def _livekit_url(raw: str) -> str | None:
    url = raw.strip().rstrip("/")
    if not url:
        return None
    if not url.startswith(("ws://", "wss://", "http://", "https://")):
        raise ConfigError("LIVEKIT_URL must be a ws://, wss://, http:// or https:// URL")
    return url


def _metrics_token(raw: str) -> str | None:
    token = raw.strip()
    if not token:
        return None
    if len(token) < 16 or not token.isascii() or not token.isprintable() or " " in token:
        raise ConfigError("METRICS_TOKEN must be at least 16 printable ASCII characters, "
                          "no spaces")
    return token


def _choice(env: Mapping[str, str], name: str, default: str,
            choices: tuple[str, ...]) -> str:
    value = (env.get(name) or default).strip().lower()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}")
    return value


def _event_loop(env: Mapping[str, str], default: str) -> str:
    loop = _choice(env, "EVENT_LOOP", default, EVENT_LOOPS)
    # Found, not imported: only the processes that run on it load it.
    if loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise ConfigError("EVENT_LOOP=uvloop needs the uvloop package (pip install uvloop)")
    return loop


def _rate(env: Mapping[str, str], name: str, default: RateSpec) -> RateSpec:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    count, _, window = raw.strip().partition("/")
    try:
        spec = RateSpec(int(count), int(window))
    except ValueError:
        raise ConfigError(f"{name} must be COUNT/SECONDS, got {raw!r}") from None
    if spec.count < 1 or spec.window < 1:
        raise ConfigError(f"{name} needs a count and a window of at least 1")
    return spec


# Text-search configurations PostgreSQL ships with (pg_ts_config).
SEARCH_LANGUAGES = (
    "simple", "arabic", "armenian", "basque", "catalan", "danish", "dutch", "english",
    "finnish", "french", "german", "greek", "hindi", "hungarian", "indonesian", "irish",
    "italian", "lithuanian", "nepali", "norwegian", "portuguese", "romanian", "russian",
    "serbian", "spanish", "swedish", "tamil", "turkish", "yiddish",
)


def _search_language(env: Mapping[str, str], default: str) -> str:
    return _choice(env, "SEARCH_LANGUAGE", default, SEARCH_LANGUAGES)


def _list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip().rstrip("/") for item in raw.split(",") if item.strip())


def _networks(raw: str) -> tuple[Network, ...]:
    try:
        return tuple(ipaddress.ip_network(item, strict=False) for item in _list(raw))
    except ValueError as exc:
        raise ConfigError(f"TRUSTED_PROXIES: {exc}") from None
