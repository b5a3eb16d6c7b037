"""The broker's own settings: where it listens, where it keeps state, which policy it reads.

Settings come from four layers, later ones winning:

1. defaults (the fields of :class:`ServerConfig`),
2. the config file (YAML, the keys of ``_SETTINGS``; ``tls``, ``oidc``, ``archive`` and
   ``slack`` are nested mappings whose keys are the settings ``tls_*``, ``oidc_*``,
   ``archive_*`` and ``slack_*``),
3. the environment (``DBACCESS_SERVER_<KEY>``, e.g. ``DBACCESS_SERVER_API_LISTEN``,
   ``DBACCESS_SERVER_TLS_CERT``, ``DBACCESS_SERVER_OIDC_ISSUER``,
   ``DBACCESS_SERVER_ARCHIVE_BUCKET``),
4. overrides from command-line flags (keys like ``api_listen`` or ``tls_cert``;
   ``None`` values mean "flag not given").

:func:`load_config` is the one place that merges them.  Every layer is reduced to
text first and then parsed by the same function per setting, so a value is
checked the same way whether it was typed in a file, exported, or passed as a
flag, and a problem names its origin: ``server.yaml:3: api_listen: ...``,
``environment: DBACCESS_SERVER_API_LISTEN: ...`` or ``command line: api_listen: ...``.

Relative paths in the file are relative to the file's directory (so a config
directory can be moved as a whole); in the environment and on the command line
they are relative to the working directory, as a shell user expects.
``{data_dir}`` in ``store_url`` stands for the data directory, whichever layer set it.

``webhooks`` (a list of ``{url, format, events}`` mappings) exists only in the
file: a list of structured entries has no sensible one-variable form.

Listen addresses may be anything in a config file (a production broker listens
on a real interface); the dev mode uses :meth:`ServerConfig.for_dev` or
:meth:`ServerConfig.ensure_loopback`, built on :func:`server.addresses.is_loopback`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from common.durations import format_duration, parse_positive_duration
from server.addresses import is_loopback, issuer_url
from server.audit.archive import SSE_MODES, ArchiveConfig, check_bucket, check_endpoint
from server.errors import InvalidInput
from server.gateway.analysis_limits import DEFAULT_CPU_BUDGET, DEFAULT_MAX_STATEMENT_SIZE
from server.notify.webhooks import EVENTS, FORMATS, WebhookConfig, check_url
from server.yamlsrc import Checker, Node, Problem, Seq, SourceError, join, parse_yaml

ENV_PREFIX = "DBACCESS_SERVER_"
DEFAULT_STORE_URL = "sqlite:///{data_dir}/store.db"
DATA_DIR_PLACEHOLDER = "{data_dir}"
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 (compared with, never bound)
_HOST = re.compile(r"[A-Za-z0-9._-]+")
_PORT = re.compile(r"[0-9]{1,5}")


class ConfigError(SourceError):
    """Settings the broker cannot start with; ``problems`` lists every mistake found."""


class HostPort(NamedTuple):
    """A listen or connect address; port 0 asks the system for a free port when listening."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


# What one broker process serves: "api" (the HTTPS API, the web inbox, /mcp,
# /metrics), "gateway" (the PostgreSQL gateway, without the web framework) or both.
ROLES = ("all", "api", "gateway")
DEFAULT_API_LISTEN = "127.0.0.1:8700"
DEFAULT_GATEWAY_LISTEN = "127.0.0.1:8701"


@dataclass(frozen=True)
class TlsConfig:
    """Certificate and key the API and gateway present; ``ca`` verifies the peers they talk to."""

    cert: Path
    key: Path
    ca: Path | None = None


DEFAULT_OIDC_SCOPES = ("openid", "email", "profile")
DEFAULT_IDENTITY_CLAIMS = ("email", "sub")
DEFAULT_USER_TOKEN_TTL = timedelta(hours=8)
DEFAULT_WORKLOAD_TOKEN_TTL = timedelta(hours=1)


@dataclass(frozen=True, kw_only=True)
class OidcConfig:
    """The identity provider people log in with (the ``oidc:`` mapping of the file).

    The CLI runs the login flow against ``issuer`` itself, as the public client
    ``client_id``, and hands the ID token to the broker, which accepts it only if
    ``issuer`` signed it for ``audience`` (default: ``client_id``).  The first of
    ``identity_claims`` present in the token names the person, ``groups_claim``
    lists their groups, and the broker token they get lasts ``token_ttl``.
    ``client_secret`` is only for providers that demand one even from native
    apps; it is handed to every CLI, so it must not be a confidential one.
    """

    issuer: str
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    scopes: tuple[str, ...] = DEFAULT_OIDC_SCOPES
    identity_claims: tuple[str, ...] = DEFAULT_IDENTITY_CLAIMS
    groups_claim: str = "groups"
    audience: str | None = None
    token_ttl: timedelta = DEFAULT_USER_TOKEN_TTL

    @property
    def allowed_audience(self) -> str:
        return self.audience or self.client_id


DEFAULT_SLACK_API_URL = "https://slack.com/api/"


@dataclass(frozen=True, kw_only=True)
class SlackConfig:
    """The Slack app reviewers decide from (the ``slack:`` mapping of the file).

    ``bot_token`` posts the access-request messages to ``channel`` and updates
    them; ``signing_secret`` verifies the interaction requests Slack sends to
    ``/integrations/slack/interactions``.  ``email_lookup`` lets a Slack user
    whose e-mail Slack has confirmed review as the identity of that e-mail when
    the policy's ``slack_users`` does not name them.  ``api_url`` is Slack's Web
    API (changed only to point at a stand-in).
    """

    signing_secret: str = field(repr=False)
    bot_token: str = field(repr=False)
    channel: str
    email_lookup: bool = True
    api_url: str = DEFAULT_SLACK_API_URL


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """The merged settings.

    Addresses are ``host:port`` text as written in the file (checked, IPv6 in
    brackets); ``parse_hostport`` splits them.  Constructed directly,
    ``data_dir`` is made absolute, ``{data_dir}`` in ``store_url`` is filled in,
    and a relative ``policy`` is taken inside ``data_dir``.  ``store_url`` stays
    out of ``repr`` because it may hold a password.
    """

    data_dir: Path
    role: str = "all"
    api_listen: str = DEFAULT_API_LISTEN
    gateway_listen: str = DEFAULT_GATEWAY_LISTEN
    public_api_url: str | None = None
    public_gateway_address: str | None = None
    store_url: str = field(default=DEFAULT_STORE_URL, repr=False)
    # The keys that seal the secrets the store keeps (server/store/sealing.py).
    store_key_file: Path | None = None
    policy: Path = Path("policy.yaml")
    tls: TlsConfig | None = None
    reaper_interval: timedelta = timedelta(seconds=30)
    # How long a replica's heartbeat lease lasts (server.sessions.replicas): after
    # its death, others end its sessions once it has run out.
    replica_lease: timedelta = timedelta(seconds=15)
    # Deprecated: the policy's limits.max_connections_per_session decides; when
    # given, this only caps it (server.sessions.service).
    session_max_connections: int | None = None
    gateway_max_connections: int = 1000
    gateway_max_connections_per_identity: int = 100
    gateway_startup_timeout: timedelta = timedelta(seconds=15)
    shutdown_grace: timedelta = timedelta(seconds=10)
    gateway_cancel_rate: float = 5.0
    # What analysing one statement may cost (server.gateway.analysis_limits).
    gateway_max_statement_size: int = DEFAULT_MAX_STATEMENT_SIZE
    gateway_analysis_cpu_budget: float = DEFAULT_CPU_BUDGET
    oidc: OidcConfig | None = None
    workload_token_ttl: timedelta = DEFAULT_WORKLOAD_TOKEN_TTL
    webhooks: tuple[WebhookConfig, ...] = ()
    archive: ArchiveConfig | None = None
    slack: SlackConfig | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        data_dir = _absolute(self.data_dir, Path.cwd())
        object.__setattr__(self, "data_dir", data_dir)
        object.__setattr__(
            self, "store_url", self.store_url.replace(DATA_DIR_PLACEHOLDER, str(data_dir))
        )
        object.__setattr__(self, "policy", _absolute(self.policy, data_dir))

    @classmethod
    def for_dev(
        cls,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        api_port: int = 0,
        gateway_port: int = 0,
        policy: Path | None = None,
        tls: TlsConfig | None = None,
        store_url: str = DEFAULT_STORE_URL,
    ) -> ServerConfig:
        """Settings for the dev mode: everything in ``data_dir``, listening on loopback only.

        Port 0 (the default) lets the system pick free ports; the dev mode then
        advertises the bound ones.  A non-loopback ``host`` raises InvalidInput.
        """
        config = cls(
            data_dir=data_dir,
            api_listen=str(HostPort(host, api_port)),
            gateway_listen=str(HostPort(host, gateway_port)),
            store_url=store_url,
            policy=policy if policy is not None else Path("policy.yaml"),
            tls=tls,
            source="dev mode",
        )
        config.ensure_loopback()
        return config

    def ensure_loopback(self) -> None:
        """Raise InvalidInput unless both listen addresses are loopback ones."""
        exposed = [
            f"{name} {address}"
            for name, address in (("api", self.api_listen), ("gateway", self.gateway_listen))
            if not is_loopback(parse_hostport(address).host)
        ]
        if exposed:
            raise InvalidInput(
                f"the dev mode listens on loopback only, not on {', '.join(exposed)}",
                hint="use 127.0.0.1 or ::1, or run the broker with a config file",
            )

    def advertised_api_url(self, bound_port: int | None = None) -> str:
        """The API URL clients are told: ``public_api_url``, else derived from ``api_listen``.

        Pass ``bound_port`` when listening on port 0.
        """
        if self.public_api_url is not None:
            return self.public_api_url
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{_advertised(self.api_listen, bound_port)}"

    def advertised_gateway_address(self, bound_port: int | None = None) -> HostPort:
        """Where tunnels connect: ``public_gateway_address``, else from ``gateway_listen``."""
        if self.public_gateway_address is not None:
            return parse_hostport(self.public_gateway_address)
        return _advertised(self.gateway_listen, bound_port)


def _advertised(listen_text: str, bound_port: int | None) -> HostPort:
    listen = parse_hostport(listen_text)
    port = bound_port if bound_port is not None else listen.port
    if port == 0:
        raise ValueError(f"{listen} picks a free port: pass the port it is bound to")
    # A wildcard address is where the broker listens, not where anyone can reach it.
    host = socket.getfqdn() if listen.host in _WILDCARD_HOSTS else listen.host
    return HostPort(host, port)


def parse_hostport(text: str) -> HostPort:
    """Split ``host:port`` or ``[v6]:port`` into a (host, port) tuple; ValueError otherwise."""
    value = text.strip()
    if "://" in value:
        raise ValueError(f"{text!r} is a URL; give host:port (e.g. 127.0.0.1:8700)")
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f"{text!r} is not [address]:port (e.g. [::1]:8700)")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise ValueError(f"{host!r} in {text!r} is not an IPv6 address") from None
    else:
        host, colon, port_text = value.rpartition(":")
        if not colon:
            raise ValueError(f"{text!r} is not host:port (e.g. 127.0.0.1:8700)")
        if ":" in host:
            raise ValueError(f"{text!r}: put an IPv6 address in brackets (e.g. [::1]:8700)")
        if not host:
            raise ValueError(
                f"{text!r} has no host (write 0.0.0.0:{port_text} for every interface)"
            )
        if not _HOST.fullmatch(host):
            raise ValueError(f"{host!r} in {text!r} is not a host name or address")
    if not _PORT.fullmatch(port_text) or int(port_text) > 65535:
        raise ValueError(f"{text!r}: the port must be a number from 0 to 65535")
    return HostPort(host, int(port_text))


@dataclass(frozen=True)
class _Origin:
    """Where a value was given, for error messages and for resolving relative paths."""

    source: str
    line: int | None
    key: str
    base: Path


_Parser = Callable[[str, Path], object]


def _absolute(path: Path, base: Path) -> Path:
    return Path(os.path.abspath(base / path.expanduser()))


def _path(text: str, base: Path) -> Path:
    return _absolute(Path(text), base)


def _listen(text: str, base: Path) -> str:
    return str(parse_hostport(text))


def _public_address(text: str, base: Path) -> str:
    address = parse_hostport(text)
    if address.port == 0:
        raise ValueError(f"{text!r}: clients need a real port, not 0")
    return str(address)


def _public_url(text: str, base: Path) -> str:
    url = urlsplit(text.strip())
    if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment:
        raise ValueError(f"{text!r} is not an http(s) URL such as https://broker.example.com:8700")
    return text.strip().rstrip("/")


def _store_url(text: str, base: Path) -> str:
    # Messages here never quote the URL: a PostgreSQL store URL may hold a password.
    scheme, sep, rest = text.strip().partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ValueError("not a URL (use sqlite:///path/store.db or postgresql+psycopg://...)")
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        return f"postgresql+psycopg://{rest}"
    if scheme != "sqlite":
        raise ValueError(
            f"unsupported store {scheme!r} (use sqlite:///path/store.db or postgresql+psycopg://...)"
        )
    if not rest:
        return "sqlite://"
    if not rest.startswith("/"):
        raise ValueError("sqlite URLs have three slashes: sqlite:///path/store.db")
    file, question, query = rest[1:].partition("?")
    if file and file != ":memory:" and not file.startswith(("/", DATA_DIR_PLACEHOLDER)):
        file = str(_absolute(Path(file), base))
    return f"sqlite:///{file}{question}{query}"


def _positive_duration(text: str, base: Path) -> timedelta:
    return parse_positive_duration(text)


def _issuer(text: str, base: Path) -> str:
    return issuer_url(text)


def _word(text: str, base: Path) -> str:
    value = text.strip()
    if not value or any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"{text!r} must be one word without spaces")
    return value


def _secret(text: str, base: Path) -> str:
    # Never quoted back: it is a secret, even if a weak one.
    if not text.strip() or not text.strip().isprintable():
        raise ValueError("the value must be printable text")
    return text.strip()


def _words(text: str, base: Path) -> tuple[str, ...]:
    words = tuple(text.split())
    if not words:
        raise ValueError("give at least one name")
    for word in words:
        _word(word, base)
    return words


def _scopes(text: str, base: Path) -> tuple[str, ...]:
    scopes = _words(text, base)
    if "openid" not in scopes:
        raise ValueError(f"{' '.join(scopes)!r} lacks 'openid', without which there is no ID token")
    return scopes


def _role(text: str, base: Path) -> str:
    value = text.strip()
    if value not in ROLES:
        raise ValueError(f"{value!r} is not a role (one of: {', '.join(ROLES)})")
    return value


def _positive_int(text: str, base: Path) -> int:
    if not re.fullmatch(r"[0-9]+", text.strip()) or int(text) < 1:
        raise ValueError(f"{text!r} is not a whole number of 1 or more")
    return int(text)


def _bucket(text: str, base: Path) -> str:
    return check_bucket(text.strip())


def _endpoint(text: str, base: Path) -> str:
    return check_endpoint(text.strip())


def _prefix(text: str, base: Path) -> str:
    prefix = text.strip().strip("/")
    if any(not c.isprintable() for c in prefix) or "//" in prefix:
        raise ValueError(f"{text!r} is not a usable key prefix such as dbaccess/prod")
    return prefix


def _sse(text: str, base: Path) -> str:
    if text.strip() not in SSE_MODES:
        raise ValueError(f"{text.strip()!r} is not one of: {', '.join(SSE_MODES)}")
    return text.strip()


def _flag(text: str, base: Path) -> bool:
    value = text.strip().lower()
    if value in ("true", "yes", "on", "1"):
        return True
    if value in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"{text!r} is not true or false")


def _positive_number(text: str, base: Path) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{text!r} must be a number above zero")
    return value


_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2}


def _byte_size(text: str, base: Path) -> int:
    found = re.fullmatch(r"([0-9]+)\s*([A-Za-z]*)", text.strip())
    unit = found.group(2).lower() if found else ""
    if found is None or unit not in _SIZE_UNITS or int(found.group(1)) < 1:
        raise ValueError(f"{text!r} is not a size such as 262144, 256KiB or 1MiB")
    return int(found.group(1)) * _SIZE_UNITS[unit]


_SETTINGS: dict[str, _Parser] = {
    "role": _role,
    "api_listen": _listen,
    "gateway_listen": _listen,
    "public_api_url": _public_url,
    "public_gateway_address": _public_address,
    "data_dir": _path,
    "store_url": _store_url,
    "store_key_file": _path,
    "policy": _path,
    "tls_cert": _path,
    "tls_key": _path,
    "tls_ca": _path,
    "reaper_interval": _positive_duration,
    "replica_lease": _positive_duration,
    "session_max_connections": _positive_int,
    "gateway_max_connections": _positive_int,
    "gateway_max_connections_per_identity": _positive_int,
    "gateway_startup_timeout": _positive_duration,
    "shutdown_grace": _positive_duration,
    "gateway_cancel_rate": _positive_number,
    "gateway_max_statement_size": _byte_size,
    "gateway_analysis_cpu_budget": _positive_number,
    "oidc_issuer": _issuer,
    "oidc_client_id": _word,
    "oidc_client_secret": _secret,
    "oidc_scopes": _scopes,
    "oidc_identity_claims": _words,
    "oidc_groups_claim": _word,
    "oidc_audience": _word,
    "oidc_token_ttl": _positive_duration,
    "workload_token_ttl": _positive_duration,
    "archive_bucket": _bucket,
    "archive_prefix": _prefix,
    "archive_endpoint_url": _endpoint,
    "archive_region": _word,
    "archive_server_side_encryption": _sse,
    "archive_kms_key_id": _word,
    "archive_spool_dir": _path,
    "archive_keep_local": _flag,
    "archive_interval": _positive_duration,
    "archive_retry_max": _positive_duration,
    "archive_audit_segment_age": _positive_duration,
    "archive_audit_segment_events": _positive_int,
    "slack_signing_secret": _secret,
    "slack_bot_token": _secret,
    "slack_channel": _word,
    "slack_email_lookup": _flag,
    "slack_api_url": _public_url,
}
_TLS_KEYS = ("cert", "key", "ca")
_OIDC_KEYS = (
    "issuer",
    "client_id",
    "client_secret",
    "scopes",
    "identity_claims",
    "groups_claim",
    "audience",
    "token_ttl",
)
_ARCHIVE_KEYS = tuple(key[len("archive_") :] for key in _SETTINGS if key.startswith("archive_"))
_SLACK_KEYS = tuple(key[len("slack_") :] for key in _SETTINGS if key.startswith("slack_"))
# Settings that YAML may also give as a list; they are reduced to space-separated text.
_LIST_KEYS = ("oidc_scopes", "oidc_identity_claims")
_NESTED = ("tls_", "oidc_", "archive_", "slack_")
_FILE_KEYS = (
    *(key for key in _SETTINGS if not key.startswith(_NESTED)),
    "tls",
    "oidc",
    "archive",
    "slack",
    "webhooks",
)
_WEBHOOK_KEYS = ("url", "format", "events")


def load_config(
    path: str | os.PathLike[str] | None,
    overrides: Mapping[str, object] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> ServerConfig:
    """Merge defaults < config file at ``path`` (optional) < environment < ``overrides``.

    ``environ`` defaults to ``os.environ``.  Raises :class:`ConfigError` listing
    every problem found in any layer.
    """
    cwd = Path.cwd()
    given: dict[str, tuple[str, _Origin]] = {}
    problems: list[Problem] = []
    source: str | None = None
    config_dir = cwd
    webhooks: list[WebhookConfig] = []
    if path is not None:
        source = os.fspath(path)
        config_dir = Path(os.path.abspath(Path(source).parent))
        problems += _file_layer(Path(source), config_dir, given, webhooks)
    env = os.environ if environ is None else environ
    for key in _SETTINGS:
        variable = ENV_PREFIX + key.upper()
        if env.get(variable, ""):
            given[key] = (env[variable], _Origin("environment", None, variable, cwd))
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        name = key.replace("-", "_").replace(".", "_")
        origin = _Origin("command line", None, name, cwd)
        text = _as_text(value)
        if name not in _SETTINGS:
            problems.append(Problem(origin.source, None, key, "unknown setting"))
        elif text is None:
            problems.append(Problem(origin.source, None, key, f"unusable value {value!r}"))
        else:
            given[name] = (text, origin)

    values: dict[str, object] = {}
    origins: dict[str, _Origin] = {}
    for key, (text, origin) in given.items():
        try:
            values[key] = _SETTINGS[key](text, origin.base)
        except ValueError as exc:
            problems.append(Problem(origin.source, origin.line, origin.key, str(exc)))
        origins[key] = origin
    tls = _tls(values, origins, problems)
    oidc = _oidc(values, origins, problems)
    archive = _archive(values, origins, problems)
    slack = _slack(values, origins, problems)
    if values.get("role") == "api" and "public_gateway_address" not in origins:
        origin = origins["role"]
        problems.append(
            Problem(
                origin.source,
                origin.line,
                origin.key,
                "an API-only broker serves no gateway: give public_gateway_address, "
                "where clients reach the gateway replicas",
            )
        )
    if problems:
        raise ConfigError(problems)

    # Each value was produced by its setting's parser, so it has the field's type.
    fields: dict[str, Any] = {
        key: value for key, value in values.items() if not key.startswith(_NESTED)
    }
    fields.setdefault("data_dir", config_dir)
    if path is not None:
        fields.setdefault("policy", config_dir / "policy.yaml")
    if archive is not None and archive.spool_dir is None:
        data_dir = _absolute(Path(fields["data_dir"]), cwd)
        archive = replace(archive, spool_dir=data_dir / "archive-spool")
    return ServerConfig(
        tls=tls,
        oidc=oidc,
        archive=archive,
        slack=slack,
        webhooks=tuple(webhooks),
        source=source,
        **fields,
    )


def _file_layer(
    file: Path,
    config_dir: Path,
    given: dict[str, tuple[str, _Origin]],
    webhooks: list[WebhookConfig] | None = None,
) -> list[Problem]:
    source = str(file)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [Problem(source, None, "", "config file not found")]
    except UnicodeDecodeError:
        return [Problem(source, None, "", "not UTF-8 text")]
    except OSError as exc:
        return [Problem(source, None, "", f"cannot read the config file: {exc.strerror or exc}")]
    root, problems = parse_yaml(text, source)
    if root is None:
        # An empty (or all-comments) config file means "all defaults".
        return problems
    check = Checker(source, problems)
    top = check.mapping(root, "", _FILE_KEYS, line=root.line)
    for key, entry in top:
        if key == "tls":
            tls = check.mapping(entry.value, "tls", _TLS_KEYS, line=entry.key_line)
            for tls_key, tls_entry in tls:
                tls_path = join("tls", tls_key)
                value = check.text(tls_entry.value, tls_path)
                if value is not None and tls_key in _TLS_KEYS:
                    origin = _Origin(source, tls_entry.value.line, tls_path, config_dir)
                    given[f"tls_{tls_key}"] = (value, origin)
        elif key in ("oidc", "archive", "slack"):
            keys = {"oidc": _OIDC_KEYS, "archive": _ARCHIVE_KEYS, "slack": _SLACK_KEYS}[key]
            for sub_key, sub_entry in check.mapping(entry.value, key, keys, line=entry.key_line):
                sub_path = join(key, sub_key)
                name = f"{key}_{sub_key}"
                value = _file_text(check, sub_entry.value, sub_path, listed=name in _LIST_KEYS)
                if value is not None and sub_key in keys:
                    origin = _Origin(source, sub_entry.value.line, sub_path, config_dir)
                    given[name] = (value, origin)
        elif key == "webhooks":
            found = _webhooks(check, entry.value)
            if webhooks is not None:
                webhooks.extend(found)
        elif key in _SETTINGS:
            value = check.text(entry.value, key)
            if value is not None:
                given[key] = (value, _Origin(source, entry.value.line, key, config_dir))
    return check.problems


def _webhooks(check: Checker, node: Node) -> list[WebhookConfig]:
    hooks = []
    for index, item in enumerate(check.items(node, "webhooks")):
        path = f"webhooks[{index}]"
        hook = check.mapping(item, path, _WEBHOOK_KEYS, line=item.line)
        url_entry = hook.required("url")
        url = check.convert(url_entry.value, join(path, "url"), check_url) if url_entry else None
        fmt = "json"
        fmt_entry = hook.optional("format")
        if fmt_entry is not None:
            text = check.text(fmt_entry.value, join(path, "format"))
            if text is not None and text not in FORMATS:
                check.add(
                    fmt_entry.value.line,
                    join(path, "format"),
                    f"{text!r} is not a webhook format (one of: {', '.join(FORMATS)})",
                )
            fmt = text or fmt
        events: set[str] | None = None
        events_entry = hook.optional("events")
        if events_entry is not None:
            events = set()
            for n, event_node in enumerate(check.items(events_entry.value, join(path, "events"))):
                name = check.text(event_node, f"{join(path, 'events')}[{n}]")
                if name is not None and name not in EVENTS:
                    check.add(
                        event_node.line,
                        f"{join(path, 'events')}[{n}]",
                        f"{name!r} is not an event (one of: {', '.join(EVENTS)})",
                    )
                elif name is not None:
                    events.add(name)
        if url is not None:
            if events is None:
                hooks.append(WebhookConfig(url, fmt))
            else:
                hooks.append(WebhookConfig(url, fmt, frozenset(events)))
    return hooks


def _file_text(check: Checker, node: Node, path: str, *, listed: bool) -> str | None:
    if not (listed and isinstance(node, Seq)):
        return check.text(node, path)
    words = [check.text(item, f"{path}[{index}]") for index, item in enumerate(node.items)]
    if any(word is None for word in words):
        return None
    if not words:
        check.add(node.line, path, "give at least one name")
        return None
    return " ".join(str(word) for word in words)


def _as_text(value: object) -> str | None:
    """Flags arrive typed or as text; reduce them to text so one parser checks every layer."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return None
    if isinstance(value, int | Path):
        return str(value)
    if isinstance(value, timedelta):
        return format_duration(value) if value >= timedelta(0) else None
    if isinstance(value, tuple) and len(value) == 2:
        host, port = value
        if isinstance(host, str) and isinstance(port, int) and not isinstance(port, bool):
            return str(HostPort(host, port))
    return None


def _tls(
    values: dict[str, object], origins: dict[str, _Origin], problems: list[Problem]
) -> TlsConfig | None:
    cert, key, ca = (values.get(f"tls_{name}") for name in _TLS_KEYS)
    if cert is None and key is None and ca is None:
        return None
    if cert is None or key is None:
        present = next(f"tls_{n}" for n in _TLS_KEYS if values.get(f"tls_{n}") is not None)
        origin = origins[present]
        problems.append(
            Problem(origin.source, origin.line, origin.key, "tls needs both cert and key")
        )
        return None
    assert isinstance(cert, Path) and isinstance(key, Path)
    assert ca is None or isinstance(ca, Path)
    return TlsConfig(cert=cert, key=key, ca=ca)


def _section(
    prefix: str, keys: Iterable[str], values: dict[str, object], origins: dict[str, _Origin]
) -> tuple[list[str], dict[str, object]]:
    """The keys of a ``prefix_*`` group that some layer named, and the values of those
    that parsed (a named key whose value did not parse has its problem already)."""
    named = [key for key in keys if f"{prefix}_{key}" in origins]
    return named, {key: values[f"{prefix}_{key}"] for key in named if f"{prefix}_{key}" in values}


def _oidc(
    values: dict[str, object], origins: dict[str, _Origin], problems: list[Problem]
) -> OidcConfig | None:
    named, given = _section("oidc", _OIDC_KEYS, values, origins)
    if not named:
        return None
    issuer, client_id = given.get("issuer"), given.get("client_id")
    if not isinstance(issuer, str) or not isinstance(client_id, str):
        # A value that was given but did not parse has its problem already.
        missing = [key for key in ("issuer", "client_id") if key not in named]
        if missing:
            origin = origins[f"oidc_{named[0]}"]
            problems.append(
                Problem(origin.source, origin.line, origin.key, f"oidc needs {missing[0]} as well")
            )
        return None
    # Each value was produced by its setting's parser, so it has the field's type.
    rest: dict[str, Any] = {
        key: value for key, value in given.items() if key not in ("issuer", "client_id")
    }
    return OidcConfig(issuer=issuer, client_id=client_id, **rest)


def _archive(
    values: dict[str, object], origins: dict[str, _Origin], problems: list[Problem]
) -> ArchiveConfig | None:
    named, given = _section("archive", _ARCHIVE_KEYS, values, origins)
    if not named:
        return None
    bucket = given.pop("bucket", None)
    if not isinstance(bucket, str):
        if "bucket" not in named:
            origin = origins[f"archive_{named[0]}"]
            problems.append(
                Problem(origin.source, origin.line, origin.key, "archive needs a bucket as well")
            )
        return None
    if "kms_key_id" in given and given.get("server_side_encryption", "aws:kms") == "AES256":
        origin = origins["archive_kms_key_id"]
        problems.append(
            Problem(
                origin.source,
                origin.line,
                origin.key,
                "a KMS key needs server_side_encryption aws:kms (or aws:kms:dsse), not AES256",
            )
        )
        return None
    # Each value was produced by its setting's parser, so it has the field's type.
    rest: dict[str, Any] = given
    return ArchiveConfig(bucket=bucket, **rest)


def _slack(
    values: dict[str, object], origins: dict[str, _Origin], problems: list[Problem]
) -> SlackConfig | None:
    named, given = _section("slack", _SLACK_KEYS, values, origins)
    if not named:
        return None
    required = ("signing_secret", "bot_token", "channel")
    missing = [key for key in required if key not in named]
    if missing:
        origin = origins[f"slack_{named[0]}"]
        problems.append(
            Problem(origin.source, origin.line, origin.key, f"slack needs {missing[0]} as well")
        )
        return None
    if any(key not in given for key in required):
        return None  # a value that was given but did not parse has its problem already
    # Each value was produced by its setting's parser, so it has the field's type.
    rest: dict[str, Any] = given
    return SlackConfig(**rest)
