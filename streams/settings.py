"""The one settings class: every knob of a worker, each with its environment variable.

Values come from the environment (``MAILPULSE_*``) and from command-line flags, which the CLI
passes as keyword arguments.  The object is frozen: build a new one instead of mutating.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import phonenumbers
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.product_recs import MOST_PRODUCTS

#: The longest wait or window a setting may name (README, "MAILPULSE_CONFIG"): a century, in seconds.
CENTURY_S = 100 * 365.25 * 86_400


#: The most partitions of a created topic (MAILPULSE_PARTITIONS, ``mailpulse broker --partitions``).
MOST_PARTITIONS = 10_000


class Settings(BaseSettings):
    """Worker settings.  Env var = ``MAILPULSE_`` + field name in upper case."""

    # (an infinite grace, retention or delay was read, then overflowed where it became milliseconds)
    model_config = SettingsConfigDict(env_prefix="MAILPULSE_", frozen=True, extra="ignore", allow_inf_nan=False)

    broker: str | None = Field(
        default=None,
        description="MAILPULSE_BROKER: kafka://host:port[,host:port]. Unset: start the embedded broker.",
    )
    data_dir: Path = Field(default=Path(".mailpulse"), description="MAILPULSE_DATA_DIR: local table state.")
    metrics_port: int = Field(
        default=9108, ge=0, le=65535,
        description="MAILPULSE_METRICS_PORT: Prometheus /metrics port.")
    metrics_host: str = Field(
        default="127.0.0.1", description="MAILPULSE_METRICS_HOST: address /metrics, /healthz and /readyz bind "
        "to; 0.0.0.0 for every interface (containers, Kubernetes).",
    )
    config: Path | None = Field(default=None, description="MAILPULSE_CONFIG: YAML of segments/triggers/guardrails.")
    clock: Literal["event", "wall"] = Field(default="event", description="MAILPULSE_CLOCK: event or wall.")
    wall_clock_delay_s: float = Field(
        default=5.0, ge=0, le=CENTURY_S,
        description="MAILPULSE_WALL_CLOCK_DELAY_S: allowed lateness.")
    wall_clock_interval_s: float = Field(
        default=1.0, gt=0, le=86_400,
        description="MAILPULSE_WALL_CLOCK_INTERVAL_S: how often --clock wall moves the watermark."
    )
    app_id: str = Field(
        default="mailpulse", pattern=r"^[A-Za-z0-9._-]{1,100}$",
        description="MAILPULSE_APP_ID: consumer group and table prefix (letters, digits, '.', '_', '-': it "
        "names topics and folders).")
    partitions: int = Field(
        default=8, ge=1, le=MOST_PARTITIONS,
        description="MAILPULSE_PARTITIONS: partitions of created topics.")
    web_port: int = Field(
        default=0, ge=0, le=65535,
        description="MAILPULSE_WEB_PORT: Faust web port; 0 picks a free one.")
    table_store: Literal["rocksdb", "memory"] = Field(
        default="rocksdb", description="MAILPULSE_TABLE_STORE: rocksdb (durable) or memory (agent tests)."
    )
    log_level: Literal["crit", "error", "warn", "info", "debug"] = Field(
        default="warn",
        description="MAILPULSE_LOG_LEVEL: crit|error|warn|info|debug.")
    live_view: Literal["auto", "on", "off"] = Field(
        default="auto", description="MAILPULSE_LIVE_VIEW: the live terminal view of `run`; auto: when stdout is a "
        "terminal and the log format is text.")
    log_format: Literal["text", "json"] = Field(
        default="text", description="MAILPULSE_LOG_FORMAT: text, or json (one JSON object per line).")
    dedupe_retention_days: float = Field(
        default=7.0, gt=0, le=CENTURY_S / 86_400,
        description="MAILPULSE_DEDUPE_RETENTION_DAYS: event-time retention of event ids."
    )
    default_phone_region: str = Field(
        default="US", description="MAILPULSE_DEFAULT_PHONE_REGION: region for phones without +country."
    )
    embedded_broker_port: int = Field(
        default=9092, ge=1, le=65535,
        description="MAILPULSE_EMBEDDED_BROKER_PORT: preferred port of the embedded broker."
    )
    session_timeout_s: float = Field(
        default=10.0, ge=6, le=60, description="MAILPULSE_SESSION_TIMEOUT_S: consumer-group session timeout; a new "
        "group's first join waits about half of it",
    )
    replication_factor: int = Field(  # (Kafka's is an INT16: a larger one was an OverflowError creating topics)
        default=1, ge=1, le=32_767, description="MAILPULSE_REPLICATION_FACTOR: of created topics.")
    batch_size: int = Field(default=500, ge=1, le=100_000, description="MAILPULSE_BATCH_SIZE: events per agent batch.")
    rocksdb_write_buffer_mb: int = Field(
        default=4, ge=1, le=4_096,
        description="MAILPULSE_ROCKSDB_WRITE_BUFFER_MB: memtable size per table partition (2 of them)."
    )
    rocksdb_memory_mb: int = Field(
        default=32, ge=4, le=1_048_576,
        description="MAILPULSE_ROCKSDB_MEMORY_MB: one budget for the memtables and the read "
        "cache of all the worker's table partitions together.",
    )
    fetch_max_wait_ms: int = Field(
        default=20, ge=1, le=10_000,
        description="MAILPULSE_FETCH_MAX_WAIT_MS: longest a consumer fetch waits at the broker for data.",
    )
    fetch_idle_wait_ms: int = Field(
        default=200, ge=0, le=10_000,
        description="MAILPULSE_FETCH_IDLE_WAIT_MS: the fetch wait once the worker read nothing for a second "
        "(the first record brings MAILPULSE_FETCH_MAX_WAIT_MS back); 0, or not above that: off.",
    )
    producer_linger_ms: int = Field(
        default=25, ge=0, le=1_000,
        description="MAILPULSE_PRODUCER_LINGER_MS: how long the worker's producer gathers messages into one "
        "batch per partition before it sends them (internal records, outputs, table changelogs).",
    )
    models_dir: Path | None = Field(
        default=None, description="MAILPULSE_MODELS_DIR: the models to score profiles with (a `mailpulse train` "
        "output directory); unset: the models shipped in models/shipped.",
    )
    identity_model: Path | None = Field(
        default=None, description="MAILPULSE_IDENTITY_MODEL: a fitted identity model (`mailpulse resolve "
        "--save-model`) that fuzzy matching scores with; unset: the shipped one.",
    )
    batch_within_s: float = Field(default=0.02, gt=0, le=60, description="MAILPULSE_BATCH_WITHIN_S: max batch wait.")
    recs_products: int = Field(
        default=MOST_PRODUCTS, ge=1, le=100_000_000,
        description="MAILPULSE_RECS_PRODUCTS: the most products whose recommendations each worker keeps in memory "
        "(those written longest ago go first, counted in mailpulse_product_recs_evicted_total), and the most "
        "products the product-neighbours table counts over its partitions (those counted longest ago are deleted, "
        "counted in mailpulse_product_neighbours_evicted_total).",
    )
    clock_delay_ms: int = Field(
        default=100, ge=0, le=60_000,
        description="MAILPULSE_CLOCK_DELAY_MS: how long after its batch an input clock goes to the profile "
        "partitions when the batch sent events to a partition another worker holds (those this worker holds are "
        "waited for until their profile agent has applied the batch), so that an event forwarded from a redirect "
        "reaches its root before the watermark passes it.",
    )

    # --- mailpulse deliver (the reference ESP connector) ---
    deliver_target: Literal["smtp", "webhook"] = Field(
        default="smtp", description="MAILPULSE_DELIVER_TARGET: smtp or webhook (--dry-run writes files instead).")
    smtp_host: str = Field(default="127.0.0.1", description="MAILPULSE_SMTP_HOST.")
    smtp_port: int = Field(default=25, ge=1, le=65535, description="MAILPULSE_SMTP_PORT.")
    smtp_security: Literal["none", "starttls", "tls"] = Field(
        default="none", description="MAILPULSE_SMTP_SECURITY: none, starttls, or tls (implicit TLS).")
    smtp_user: str | None = Field(default=None, description="MAILPULSE_SMTP_USER: with a password, log in.")
    smtp_password: SecretStr | None = Field(default=None, description="MAILPULSE_SMTP_PASSWORD (never logged).")
    mail_from: str = Field(default="shop@example.com", description="MAILPULSE_MAIL_FROM: the From: address.")
    mail_brand: str = Field(default="Our shop", description="MAILPULSE_MAIL_BRAND: the shop's name in e-mails.")
    shop_url: str = Field(default="https://shop.example.com", description="MAILPULSE_SHOP_URL: links in e-mails.")
    webhook_url: str | None = Field(default=None, description="MAILPULSE_WEBHOOK_URL: the HTTP target's URL.")
    webhook_token: SecretStr | None = Field(
        default=None, description="MAILPULSE_WEBHOOK_TOKEN: sent as a bearer token (never logged).")
    deliver_timeout_s: float = Field(
        default=10.0, gt=0, le=3_600,
        description="MAILPULSE_DELIVER_TIMEOUT_S: per attempt, its whole time (connect, "
        "request, answer).")
    deliver_attempts: int = Field(default=5, ge=1, le=50, description="MAILPULSE_DELIVER_ATTEMPTS: before "
                                  "delivery-failed.")
    deliver_backoff_s: float = Field(
        default=1.0, gt=0, le=3_600,
        description="MAILPULSE_DELIVER_BACKOFF_S: first retry "
                                     "wait; doubled each time, with jitter.")
    deliver_grace_s: float = Field(
        default=3.0, ge=0, le=86_400,
        description="MAILPULSE_DELIVER_GRACE_S: every trigger is held at least this long after "
        "deliver reads it, so that a consent withdrawal or erasure the pipeline published with it (on another "
        "topic, read apart) comes first and cancels it.")
    deliver_retry_hours: float = Field(
        default=24.0, ge=0, le=CENTURY_S / 3600,
        description="MAILPULSE_DELIVER_RETRY_HOURS: a trigger whose target still fails "
        "temporarily after MAILPULSE_DELIVER_ATTEMPTS is held and tried again in rounds (1 min, doubling up to "
        "1 h apart) for this long (from its first failure, or its first wait for a down target) before it goes to "
        "delivery-failed (retries_exhausted); while three triggers in a "
        "row have failed so for the target's sake (no connection, timeouts, SMTP 421 or a session that cannot "
        "start, HTTP 5xx, 401, 408, 429), it "
        "counts as down and due triggers wait, without an attempt, until one of them probes it.  0: no rounds.")
    deliver_ledger_days: float = Field(
        default=30.0, gt=0, le=CENTURY_S / 86_400,
        description="MAILPULSE_DELIVER_LEDGER_DAYS: trigger ids delivered longer ago are "
        "forgotten (checked hourly); keep it above the triggers topic's retention (7 days by default), or a "
        "trigger read again after that would be sent again.")
    deliver_max_late_hours: float = Field(
        default=0.0, ge=0, le=CENTURY_S / 3600,
        description="MAILPULSE_DELIVER_MAX_LATE_HOURS: a trigger whose send_at is further "
        "in the past than this is not sent but goes to delivery-failed with code expired (after an outage of "
        "deliver, a week-old abandoned-cart e-mail does more harm than good); 0, the default: no limit, as "
        "replays and backfills of history need.")
    deliver_port: int = Field(
        default=9110, ge=0, le=65535,
        description="MAILPULSE_DELIVER_PORT: deliver's /metrics, /healthz "
                              "and /unsubscribe.")
    unsubscribe_url: str | None = Field(
        default=None, description="MAILPULSE_UNSUBSCRIBE_URL: public base URL of /unsubscribe; unset: "
        "http://MAILPULSE_METRICS_HOST:MAILPULSE_DELIVER_PORT.")
    unsubscribe_secret: SecretStr | None = Field(
        default=None, description="MAILPULSE_UNSUBSCRIBE_SECRET: HMAC key of unsubscribe links; unset: one is "
        "made and kept in the deliver state folder.")
    templates_dir: Path | None = Field(
        default=None, description="MAILPULSE_TEMPLATES_DIR: e-mail templates that override the shipped ones, "
        "by file name (<trigger type>.j2).")

    @field_validator("data_dir", "config", "models_dir", "identity_model", "templates_dir", mode="before")
    @classmethod
    def _not_empty(cls, path: object) -> object:
        # ("" is Path("."), the current folder: MAILPULSE_DATA_DIR= kept the tables there, MAILPULSE_MODELS_DIR=
        # ran without scores, MAILPULSE_TEMPLATES_DIR= read templates from it, without a word)
        if isinstance(path, str) and not path.strip():
            raise ValueError("an empty path; unset the variable for the default")
        return path

    @field_validator("broker")
    @classmethod
    def _broker_addresses(cls, url: str | None) -> str | None:
        """Each address a host, with a port up to 65535 or none (the client's 9092): a URL without a
        host or with a port that is none was tried for 5 s and reported as a broker that did not answer."""
        if url:
            for address in (part.strip() for part in bootstrap_servers(url).split(",")):  # (as the clients get it)
                if address.startswith("["):  # [IPv6]:port
                    host, _, rest = address[1:].partition("]")
                    port = rest.removeprefix(":") if rest.startswith(":") else (None if not rest else "x")
                elif address.count(":") > 1:  # an IPv6 address without a port
                    host, port = address, None
                else:
                    host, colon, port = address.partition(":")
                    port = port if colon else None
                if not host or "/" in address or (
                        port is not None and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535)):
                    raise ValueError("kafka://host:port[,host:port]: each address a host, and a port up to 65535 "
                                     "if given")
        return url

    @field_validator("default_phone_region")
    @classmethod
    def _known_region(cls, region: str) -> str:
        if region not in phonenumbers.SUPPORTED_REGIONS:  # else every national-format phone is dead-lettered
            raise ValueError("a region of two capital letters that phone numbers know, e.g. US or DE")
        return region

    @field_validator("shop_url", "webhook_url", "unsubscribe_url")
    @classmethod
    def _web_address(cls, url: str | None) -> str | None:
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("an http:// or https:// URL with a host")  # (links in e-mails, the webhook)
            try:
                parts.port  # noqa: B018 (it parses the port)
            except ValueError:
                raise ValueError("an http:// or https:// URL whose port is a number up to 65535") from None
        return url

    @field_validator("webhook_url")
    @classmethod
    def _webhook_address(cls, url: str | None) -> str | None:
        """What the HTTP client can send to: every send to another URL failed as the target being
        down, until the triggers ran out of retries."""
        if url is not None:
            if "@" in urlsplit(url).netloc:
                raise ValueError("a URL without user:password@ (the client does not send them; the token goes "
                                 "in MAILPULSE_WEBHOOK_TOKEN)")
            if not all(33 <= ord(c) <= 126 for c in url):
                raise ValueError("a URL of printable ASCII without spaces (percent-encode the rest; a host "
                                 "in its xn-- form)")
        return url

    @field_validator("smtp_host")
    @classmethod
    def _smtp_host(cls, host: str) -> str:
        """A host name or an IP address, as the SMTP client connects to it: a port, a scheme or spaces
        in it made every send fail as the target being down, until the triggers ran out of retries."""
        try:
            ipaddress.ip_address(host)  # (an IPv6 address has colons)
            return host
        except ValueError:
            pass
        if not host or any(c in ":/@[]" or c.isspace() or not c.isprintable() for c in host):
            raise ValueError("a host name or an IP address, without a scheme, a port (MAILPULSE_SMTP_PORT) "
                             "or spaces")
        return host

    @field_validator("webhook_token")
    @classmethod
    def _header_token(cls, token: SecretStr | None) -> SecretStr | None:
        """It is sent in a header, which carries printable Latin-1 only."""
        if token is not None and not all(32 <= ord(c) <= 126 or 160 <= ord(c) <= 255
                                         for c in token.get_secret_value()):
            raise ValueError("a token of printable characters that an HTTP header carries (Latin-1)")
        return token

    @property
    def bootstrap_servers(self) -> str:
        """The broker URL as a librdkafka/aiokafka bootstrap list (no scheme)."""
        if not self.broker:
            raise ValueError("no broker configured")
        return bootstrap_servers(self.broker)

    @property
    def dedupe_retention_ms(self) -> int:
        """``dedupe_retention_days`` in event-time milliseconds, as the profile hop keeps event ids."""
        return int(self.dedupe_retention_days * 86_400_000)

    @property
    def faust_broker(self) -> str:
        """The broker URL in Faust's form (``kafka://``)."""
        return ";".join(f"kafka://{host}" for host in self.bootstrap_servers.split(","))


def bootstrap_servers(url: str) -> str:
    """``kafka://host:port[,host:port]`` as a librdkafka/aiokafka bootstrap list (no scheme)."""
    return ",".join(part.split("://", 1)[-1] for part in url.split(","))
