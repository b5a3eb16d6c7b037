"""dbaccess-server: run the broker (dev or from a config file) and administer it.

``dev`` is the embedded default: everything on loopback, a SQLite store and, when
no target is given, a throwaway PostgreSQL cluster with demo data, plus CLI
profiles and tokens for two identities (``dev``, and ``reviewer`` to approve
what ``dev`` asks for) so that ``dbaccess`` works at once.
"""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from server.errors import DbaccessError

if TYPE_CHECKING:
    from collections.abc import Callable

    from server.audit.archive import ArchiveConfig
    from server.config import OidcConfig, SlackConfig
    from server.gateway.analysis_limits import AnalysisLimits
    from server.notify.webhooks import WebhookConfig
    from server.policy.model import ScopePolicy
    from server.runtime import Runtime, RuntimeOptions
    from server.store.db import Store

app = typer.Typer(
    name="dbaccess-server",
    help="The dbaccess broker: API, gateway and reaper.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
policy_app = typer.Typer(help="Check and explain policy files.", no_args_is_help=True)
token_app = typer.Typer(help="Issue, list and revoke broker API tokens.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
app.add_typer(token_app, name="token")
store_app = typer.Typer(
    help="The store's key and the secrets it seals (docs/deploy.md).", no_args_is_help=True
)
app.add_typer(store_app, name="store")

DEV_IDENTITY = "dev"
DEV_GROUPS = ("dev", "admin")
# A second person, to approve what "dev" asks for: in the write scope's allow
# group, so the approver of its statement reviews (never of one's own).
REVIEWER_IDENTITY = "reviewer"
REVIEWER_GROUPS = ("dev",)
# The web inbox's one-click logins in the dev mode: its two identities and an auditor.
DEV_WEB_LOGINS = (
    (DEV_IDENTITY, DEV_GROUPS),
    (REVIEWER_IDENTITY, REVIEWER_GROUPS),
    ("auditor", ("auditor",)),
)
# An AI agent acting for "dev", for trying `dbaccess --profile agent mcp`: held to
# the policy's agents rules (docs/agents.md).
DEV_AGENT_IDENTITY = "dev-agent"
# CLI profiles the dev mode writes: (profile, identity, groups, token kind, owner).
DEV_PROFILES: tuple[tuple[str, str, tuple[str, ...], str, str | None], ...] = (
    ("default", DEV_IDENTITY, DEV_GROUPS, "dev", None),
    (DEV_IDENTITY, DEV_IDENTITY, DEV_GROUPS, "dev", None),
    (REVIEWER_IDENTITY, REVIEWER_IDENTITY, REVIEWER_GROUPS, "dev", None),
    ("agent", DEV_AGENT_IDENTITY, ("dev",), "agent", DEV_IDENTITY),
)


class WebhookFormat(StrEnum):
    json = "json"
    slack = "slack"


def _dev_webhooks(urls: list[str], fmt: str) -> tuple[WebhookConfig, ...]:
    from server.notify.webhooks import WebhookConfig, check_url

    hooks = []
    for url in urls:
        try:
            hooks.append(WebhookConfig(check_url(url), fmt))
        except ValueError as exc:
            raise _fail(f"--webhook: {exc}", 2) from None
    return tuple(hooks)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _fail(message: str, code: int = 1) -> typer.Exit:
    _say(f"dbaccess-server: error: {message}")
    return typer.Exit(code)


class Role(StrEnum):
    all = "all"
    api = "api"
    gateway = "gateway"


class LogFormat(StrEnum):
    plain = "plain"
    json = "json"


LogFormatOpt = Annotated[
    LogFormat,
    typer.Option(
        "--log-format",
        help="plain lines (for a terminal) or JSON lines with session, request and "
        "connection ids (for a log pipeline).",
    ),
]


def _logging(verbose: bool, fmt: LogFormat = LogFormat.plain) -> None:
    from server.logs import setup

    setup(verbose, fmt.value)


@app.command()
def dev(
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="Where the store, policy and demo cluster live.")
    ] = Path(".dbaccess-dev"),
    target_dsn: Annotated[
        str | None,
        typer.Option(
            "--target-dsn",
            help="Admin DSN of an existing database to register as target 'demo' "
            "(default: start a throwaway PostgreSQL cluster with demo data).",
        ),
    ] = None,
    api_port: Annotated[
        int, typer.Option("--api-port", min=0, max=65535, help="0 = any free port.")
    ] = 0,
    gateway_port: Annotated[int, typer.Option("--gateway-port", min=0, max=65535)] = 0,
    write_profile: Annotated[
        bool,
        typer.Option(
            "--write-profile/--no-write-profile",
            help="Log the CLI in as 'dev' (profiles default and dev) and 'reviewer' "
            "(profile reviewer); a profile the dev mode did not write is kept.",
        ),
    ] = True,
    reaper_interval: Annotated[float, typer.Option("--reaper-interval", help="Seconds.")] = 30.0,
    store_url: Annotated[
        str | None,
        typer.Option(
            "--store-url",
            help="The store (SQLAlchemy URL) instead of DATA_DIR/store.db: dev brokers "
            "sharing one PostgreSQL store are replicas of one deployment.",
        ),
    ] = None,
    replica_lease: Annotated[
        float,
        typer.Option(
            "--replica-lease",
            min=0.5,
            help="Seconds a replica's heartbeat lease lasts: how long after a broker's "
            "death the others on its store wait before they end its sessions.",
        ),
    ] = 15.0,
    oidc_issuer: Annotated[
        str | None,
        typer.Option(
            "--oidc-issuer", help="Identity provider people log in with (dbaccess login)."
        ),
    ] = None,
    oidc_client_id: Annotated[
        str | None,
        typer.Option("--oidc-client-id", help="The CLI's client id at that provider."),
    ] = None,
    webhook: Annotated[
        list[str] | None,
        typer.Option(
            "--webhook",
            help="POST access-request and break-glass notifications to this URL (repeatable).",
        ),
    ] = None,
    webhook_format: Annotated[
        WebhookFormat, typer.Option("--webhook-format", help="Body of those notifications.")
    ] = WebhookFormat.json,
    session_max_connections: Annotated[
        int | None,
        typer.Option(
            "--session-max-connections",
            min=1,
            help="Deprecated: a ceiling on the policy's limits.max_connections_per_session.",
        ),
    ] = None,
    gateway_max_connections: Annotated[
        int,
        typer.Option(
            "--gateway-max-connections", min=1, help="Client connections the gateway holds in all."
        ),
    ] = 1000,
    gateway_max_per_identity: Annotated[
        int,
        typer.Option(
            "--gateway-max-connections-per-identity",
            min=1,
            help="Client connections one identity may hold across its sessions.",
        ),
    ] = 100,
    gateway_startup_timeout: Annotated[
        float,
        typer.Option("--gateway-startup-timeout", min=0.1, help="Seconds a client has to log in."),
    ] = 15.0,
    shutdown_grace: Annotated[
        float,
        typer.Option(
            "--shutdown-grace",
            min=0.0,
            help="Seconds statements in flight may run on after Ctrl-C/SIGTERM.",
        ),
    ] = 10.0,
    gateway_cancel_rate: Annotated[
        float,
        typer.Option(
            "--gateway-cancel-rate",
            min=0.001,
            help="CancelRequests a second one client address may send (bursts of 4x).",
        ),
    ] = 5.0,
    access_events: Annotated[
        bool,
        typer.Option(
            "--access-events/--no-access-events",
            help="A benchmarking aid: --no-access-events records statements without "
            "their access facts (audit access finds none), so that a benchmark can "
            "measure what the facts cost against a broker that has them, in one run "
            "(bench/gateway_throughput.py). `run` always records them.",
        ),
    ] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    log_format: LogFormatOpt = LogFormat.plain,
) -> None:
    """Run broker and gateway on loopback with a demo target (for trying dbaccess out).

    Archival of recordings and audit segments to S3 is configured, as for `run`,
    by the DBACCESS_SERVER_ARCHIVE_* environment variables (bucket, endpoint_url, ...),
    and the Slack app by the DBACCESS_SERVER_SLACK_* ones (signing_secret, bot_token, channel).
    """
    _logging(verbose, log_format)
    webhooks = _dev_webhooks(webhook or [], webhook_format.value)
    oidc = _dev_oidc(oidc_issuer, oidc_client_id)
    archive = _dev_archive(data_dir.resolve())
    slack = _dev_slack()
    from server import runtime
    from server.demo.provision import provision_demo, write_admin_dsn_file

    data_dir = data_dir.resolve()
    # Traversable but not listable: the throwaway cluster inside runs as the
    # postgres OS user when the broker runs as root; secrets inside are 0600.
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
    store_file = data_dir / "store.db"
    if not store_file.exists():
        store_file.touch(mode=0o600)  # SQLite gives its -wal/-shm files the same mode
    cluster = None
    try:
        from server.demo.target import dev_policy

        if target_dsn:
            from server.demo.target import prepare_target

            prepared = prepare_target(target_dsn)
            admin_dsn, database = prepared.admin_dsn, prepared.database
        else:
            from server.pgcluster import LocalCluster

            cluster = LocalCluster(data_dir / "pg")
            if not cluster.initialized():
                _say(f"creating a PostgreSQL cluster in {cluster.data_dir} ...")
                cluster.init()
            cluster.start()
            demo = provision_demo(cluster)
            admin_dsn, database = demo.admin_dsn, demo.database
        write_admin_dsn_file(data_dir / "admin.dsn", admin_dsn)
        from server.isolated import run_isolated
        from server.tlsutil import ensure_dev_ca, fingerprint

        # In a child process: making or checking the certificates needs `cryptography`,
        # which the running broker does not (about 9 MB resident saved).
        tls = run_isolated(ensure_dev_ca, data_dir / "tls")
        assert tls.ca is not None
        ca: Path = tls.ca
        policy_path = data_dir / "policy.yaml"
        plan = dev_policy(
            policy_path.read_text() if policy_path.exists() else None, database, str(policy_path)
        )
        if plan.problem:
            raise _fail(
                f"{plan.problem}\nhint: edit the policy file, or start with another --data-dir", 2
            )
        if plan.text is not None:
            policy_path.write_text(plan.text)
        if plan.note:
            _say(plan.note)

        opts = runtime.RuntimeOptions(
            api_host="127.0.0.1",
            api_port=api_port,
            gateway_host="127.0.0.1",
            gateway_port=gateway_port,
            policy_path=policy_path,
            store_url=store_url or f"sqlite:///{data_dir / 'store.db'}",
            store_key_file=_dev_store_key(data_dir),
            reaper_interval=reaper_interval,
            replica_lease=replica_lease,
            max_connections_per_session=session_max_connections,
            gateway_max_connections=gateway_max_connections,
            gateway_max_connections_per_identity=gateway_max_per_identity,
            gateway_startup_timeout=gateway_startup_timeout,
            shutdown_grace=shutdown_grace,
            gateway_cancel_rate=gateway_cancel_rate,
            analysis_limits=_dev_analysis_limits(),
            tls=tls,
            oidc=oidc,
            webhooks=webhooks,
            archive=archive,
            slack=slack,
            ui_dev_logins=DEV_WEB_LOGINS,
            access_events=access_events,
        )

        where_target = f"database {database!r}, " + (
            f"throwaway cluster on port {cluster.port}" if cluster else "from --target-dsn"
        )

        def ready(rt: runtime.Runtime) -> None:
            assert rt.gateway is not None  # the dev broker serves every role
            lines = [
                "dbaccess dev broker is running",
                f"  API:      {rt.api_url}",
                f"  gateway:  {rt.gateway.host}:{rt.gateway.port} (TLS)",
                f"  CA:       {ca} (SHA-256 {fingerprint(ca)})",
                f"  target:   demo ({where_target})",
                f"  policy:   {policy_path}",
                f"  store:    {_shown_store(store_url) or data_dir / 'store.db'}",
            ]
            if oidc is not None:
                lines.append(f"  login:    dbaccess login  (people, via {oidc.issuer})")
            lines.append(f"  inbox:    {rt.api_url}/ui/  (reviewers' web inbox)")
            if not access_events:
                lines.append("  access:   off (statements are recorded without access facts)")
            if write_profile:
                lines += _write_cli_profiles(rt, ca)
            lines.append(
                "try: dbaccess targets; dbaccess connect demo   (Ctrl-C here stops everything)"
            )
            _say("\n".join(lines))

        _run(opts, ready)
    except DbaccessError as exc:
        raise _fail(exc.message + (f"\nhint: {exc.hint}" if exc.hint else "")) from None
    finally:
        if cluster is not None and cluster.running():
            cluster.stop()
    _say("dbaccess dev broker stopped")


def _shown_store(store_url: str | None) -> str | None:
    """A store URL as the dev mode prints it: without its password."""
    if store_url is None:
        return None
    from sqlalchemy.engine import make_url

    return make_url(store_url).render_as_string(hide_password=True)


def _run(opts: RuntimeOptions, ready: Callable[[Runtime], None]) -> None:
    """Migrate the store in a child process (Alembic stays out of the broker), then run."""
    from server import runtime
    from server.isolated import run_isolated
    from server.store.db import Store

    run_isolated(Store.migrate_url, opts.store_url)
    runtime.run(opts, ready)


def _dev_oidc(issuer: str | None, client_id: str | None) -> OidcConfig | None:
    """The dev mode's identity provider, checked like the same settings in a config file."""
    if issuer is None and client_id is None:
        return None
    from server.config import ConfigError, load_config

    try:
        flags = {"oidc_issuer": issuer, "oidc_client_id": client_id}
        oidc = load_config(None, flags, environ={}).oidc
    except ConfigError as exc:
        raise _fail(exc.message, 2) from None
    if oidc is None:
        raise _fail("give both --oidc-issuer and --oidc-client-id", 2)
    return oidc


def _dev_analysis_limits() -> AnalysisLimits:
    """The dev mode's analysis limits: DBACCESS_SERVER_GATEWAY_MAX_STATEMENT_SIZE and
    DBACCESS_SERVER_GATEWAY_ANALYSIS_CPU_BUDGET, else the defaults."""
    from server.config import ENV_PREFIX, ConfigError, load_config
    from server.gateway.analysis_limits import AnalysisLimits

    keys = ("GATEWAY_MAX_STATEMENT_SIZE", "GATEWAY_ANALYSIS_CPU_BUDGET")
    limits_env = {
        ENV_PREFIX + k: os.environ[ENV_PREFIX + k] for k in keys if ENV_PREFIX + k in os.environ
    }
    try:
        cfg = load_config(None, environ=limits_env)
    except ConfigError as exc:
        raise _fail(exc.message, 2) from None
    return AnalysisLimits(cfg.gateway_max_statement_size, cfg.gateway_analysis_cpu_budget)


def _dev_archive(data_dir: Path) -> ArchiveConfig | None:
    """The dev mode's archive: the DBACCESS_SERVER_ARCHIVE_* variables, spool in ``data_dir``."""
    from server.config import ENV_PREFIX, ConfigError, load_config

    archive_env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX + "ARCHIVE_")}
    if not archive_env:
        return None
    try:
        return load_config(None, {"data_dir": data_dir}, environ=archive_env).archive
    except ConfigError as exc:
        raise _fail(exc.message, 2) from None


def _dev_slack() -> SlackConfig | None:
    """The dev mode's Slack app: the DBACCESS_SERVER_SLACK_* variables, if any."""
    from server.config import ENV_PREFIX, ConfigError, load_config

    slack_env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX + "SLACK_")}
    if not slack_env:
        return None
    try:
        return load_config(None, environ=slack_env).slack
    except ConfigError as exc:
        raise _fail(exc.message, 2) from None


def _write_cli_profiles(rt: object, ca: Path) -> list[str]:
    """Log the CLI in as the dev identities (:data:`DEV_PROFILES`); lines for the banner.

    The broker mints the tokens; the CLI writes its own profiles and keeps the
    tokens, in a process of its own (``brokercli.devprofiles``, which says which
    profiles it replaces and which it keeps).  A kept profile's token is revoked.
    """
    import json
    import subprocess
    from datetime import timedelta

    from server.runtime import Runtime
    from server.tlsutil import fingerprint

    assert isinstance(rt, Runtime)
    minted: dict[str, str] = {}
    profiles = []
    for name, identity, groups, kind, owner in DEV_PROFILES:
        token, rec = rt.store.create_token(identity, groups, kind, timedelta(days=7), owner=owner)
        minted[name] = rec.id
        profiles.append({"name": name, "identity": identity, "token": token})
    request = {
        "server": rt.api_url,
        "ca_file": str(ca),
        "ca_fingerprint": fingerprint(ca),
        "profiles": profiles,
    }
    done = subprocess.run(
        [sys.executable, "-m", "brokercli.devprofiles"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        for token_id in minted.values():
            rt.store.revoke_token(token_id)
        problem = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return [f"  note:     the CLI's profiles were not written: {problem}"]
    answer = json.loads(done.stdout)
    for name, path, server in answer["replaced"]:
        _say(f"warning: replacing the dev profile '{name}' ({path}), which pointed at {server}")
    kept = []
    for name, path in answer["kept"]:
        rt.store.revoke_token(minted[name])
        kept.append(f"  note:     profile '{name}' ({path}) is not the dev broker's: kept")
    written: dict[str, list[str]] = {}
    for name, identity in answer["written"]:
        written.setdefault(identity, []).append(name)
    lines = []
    for identity, names in written.items():
        shown = " and ".join(f"'{n}'" for n in names)
        lines.append(f"  CLI:      {shown}: identity '{identity}'")
    if written:
        lines.append(
            "            switch with --profile NAME or DBACCESS_PROFILE "
            f"(tokens in {answer['where']})"
        )
    return lines + kept


@app.command("run")
def run_cmd(
    config: Annotated[Path, typer.Option("--config", "-c", help="Server config file (YAML).")],
    role: Annotated[
        Role | None,
        typer.Option(
            "--role",
            help="What this process serves: the API (api), the PostgreSQL gateway "
            "(gateway) or both (all); default: the config file's role, else all.",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    log_format: LogFormatOpt = LogFormat.plain,
) -> None:
    """Run the broker from a config file (production).

    Replicas on one PostgreSQL store may split the work: API-only replicas
    (--role api) start sessions and hand them to gateway-only replicas
    (--role gateway), which load no web framework (docs/deploy.md).
    """
    _logging(verbose, log_format)
    from server import runtime
    from server.config import load_config, parse_hostport
    from server.gateway.analysis_limits import AnalysisLimits
    from server.tlsutil import TlsFiles

    try:
        cfg = load_config(config, {"role": role.value if role else None})
        api_host, api_port = parse_hostport(cfg.api_listen)
        gw_host, gw_port = parse_hostport(cfg.gateway_listen)
        pub_host = pub_port = None
        if cfg.public_gateway_address:
            pub_host, pub_port = parse_hostport(cfg.public_gateway_address)
        opts = runtime.RuntimeOptions(
            role=cfg.role,
            api_host=api_host,
            api_port=api_port,
            gateway_host=gw_host,
            gateway_port=gw_port,
            policy_path=Path(cfg.policy),
            store_url=cfg.store_url,
            store_key_file=cfg.store_key_file,
            reaper_interval=cfg.reaper_interval.total_seconds(),
            replica_lease=cfg.replica_lease.total_seconds(),
            public_gateway_host=pub_host,
            public_gateway_port=pub_port,
            max_connections_per_session=cfg.session_max_connections,
            gateway_max_connections=cfg.gateway_max_connections,
            gateway_max_connections_per_identity=cfg.gateway_max_connections_per_identity,
            gateway_startup_timeout=cfg.gateway_startup_timeout.total_seconds(),
            shutdown_grace=cfg.shutdown_grace.total_seconds(),
            gateway_cancel_rate=cfg.gateway_cancel_rate,
            analysis_limits=AnalysisLimits(
                cfg.gateway_max_statement_size, cfg.gateway_analysis_cpu_budget
            ),
            oidc=cfg.oidc,
            workload_token_ttl=cfg.workload_token_ttl,
            tls=TlsFiles(cfg.tls.cert, cfg.tls.key, cfg.tls.ca) if cfg.tls else None,
            webhooks=cfg.webhooks,
            archive=cfg.archive,
            slack=cfg.slack,
            public_api_url=cfg.public_api_url,
        )

        def ready(rt: runtime.Runtime) -> None:
            served = []
            if rt.api_url is not None:
                served.append(f"API {rt.api_url}")
            if rt.gateway is not None:
                served.append(f"gateway {rt.gateway.host}:{rt.gateway.port}")
            else:
                served.append(f"clients sent to the gateway at {cfg.public_gateway_address}")
            role_said = "" if cfg.role == "all" else f" ({cfg.role})"
            _say(f"dbaccess broker{role_said}: {', '.join(served)}")

        _run(opts, ready)
    except DbaccessError as exc:
        raise _fail(exc.message + (f"\nhint: {exc.hint}" if exc.hint else "")) from None


def _dev_store_key(data_dir: Path) -> Path:
    """The dev broker's store key file: DBACCESS_SERVER_STORE_KEY_FILE's (dev
    replicas sharing a store share it), else DATA_DIR/store.key, made at first use."""
    from server.store.sealing import create_key_file

    given = os.environ.get("DBACCESS_SERVER_STORE_KEY_FILE", "").strip()
    if given:
        return Path(given).resolve()
    path = data_dir / "store.key"
    if not path.exists():
        create_key_file(path, "dev1")
        _say(f"wrote a store key to {path}: it seals the Vault leases the store keeps")
    return path


StoreUrlOpt = Annotated[
    str | None, typer.Option("--store-url", help="Store URL (default: from --config).")
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c")]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="A dev data dir (uses its store).")
]


def _open_store(store_url: str | None, config: Path | None, data_dir: Path | None) -> Store:
    from server.store.db import Store

    url = store_url
    try:
        if url is None and config is not None:
            from server.config import load_config

            url = load_config(config).store_url
        if url is None and data_dir is not None:
            url = f"sqlite:///{data_dir.resolve() / 'store.db'}"
        if url is None:
            raise _fail("give --store-url, --config or --data-dir", 2)
        return Store.open(url)
    except DbaccessError as exc:
        raise _fail(exc.message, 2) from None


@policy_app.command("check")
def policy_check(
    file: Annotated[Path, typer.Argument(help="Policy file to validate.")],
    broker_env: Annotated[
        bool,
        typer.Option(
            "--broker-env",
            help="This is the environment the broker runs in: also check that every "
            "masking key_env variable is set here and long enough.",
        ),
    ] = False,
) -> None:
    """Validate a policy file; errors name the file, line and key.

    Masking keys are checked as a session would read them: a key_file must
    exist, be readable and hold at least 16 bytes. A key_env variable is
    checked only with --broker-env (CI rarely has the broker's secrets).
    """
    from server.gateway.masking import masking_key_problems
    from server.policy import PolicyError, load_policy

    try:
        policy = load_policy(file)
    except PolicyError as exc:
        problems = getattr(exc, "problems", None) or [exc.message]
        for p in problems:
            _say(str(p))
        raise typer.Exit(2) from None
    keys = masking_key_problems(policy.targets.values(), environment=broker_env)
    for problem in keys:
        _say(f"{file}: {problem}")
    if keys:
        raise typer.Exit(2)
    scopes = sum(len(t.scopes) for t in policy.targets.values())
    _say(f"{file}: OK ({len(policy.targets)} targets, {scopes} scopes)")
    for target in policy.targets.values():
        for scope in target.scopes.values():
            _say(f"{target.name}/{scope.name} limits: {_limits_line(scope)}")


@policy_app.command("test")
def policy_test(
    candidate: Annotated[Path, typer.Argument(help="The candidate policy file.")],
    since: Annotated[
        str, typer.Option("--since", help="Replay from then: 30d, 2026-11-01, last monday.")
    ] = "30d",
    until: Annotated[str | None, typer.Option("--until", help="Replay until then.")] = None,
    current: Annotated[
        Path | None,
        typer.Option(
            "--policy",
            "-p",
            help="The policy in force (default: the one --config names, or the --data-dir's).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of text.")] = False,
    store_url: StoreUrlOpt = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Replay the recorded sessions and statements of a period against a candidate policy.

    Offline, from the facts already recorded: prints what would change, grouped by
    rule with counts and examples -- sessions that would now need approval or be
    denied, statements that would now be refused or reviewed (or no longer), columns
    that would be masked differently. Exits 1 when anything would change (so it can
    gate a policy change in CI), 0 when nothing would, 2 when a policy is invalid.
    """
    import json
    from datetime import UTC, datetime

    from common.durations import parse_time
    from server.policy import PolicyError, load_policy
    from server.policytest import replay

    if current is None and config is not None:
        from server.config import load_config

        try:
            current = load_config(config).policy
        except DbaccessError as exc:
            raise _fail(exc.message, 2) from None
    if current is None and data_dir is not None:
        current = data_dir / "policy.yaml"
    if current is None:
        raise _fail("give the policy in force: --policy, --config or --data-dir", 2)
    policies = []
    for path in (current, candidate):
        try:
            policies.append(load_policy(path))
        except PolicyError as exc:
            for p in exc.problems:
                _say(str(p))
            raise typer.Exit(2) from None
    now = datetime.now(UTC)
    try:
        start = parse_time(since, now, direction="ago")
        end = parse_time(until, now, direction="ago") if until else now
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    store = _open_store(store_url, config, data_dir)
    try:
        result = replay(store, policies[0], policies[1], start, end)
    finally:
        store.close()
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(
            f"replayed {result.sessions} sessions and {result.statements} statements "
            f"from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC against {candidate}"
        )
        for group in result.groups():
            noun = "session" if group["kind"] == "session" else "statement"
            count = group["count"]
            print(
                f"{group['kind']}: {group['rule']}: {group['before']} -> {group['after']}: "
                f"{count} {noun}{'' if count == 1 else 's'}"
            )
            for example in group["examples"]:
                what = " ".join(str(example["what"]).split())
                what = what if len(what) <= 100 else what[:99] + "\u2026"
                print(
                    f"    {example['ts'][:19].replace('T', ' ')} {example['identity']} "
                    f"{example['target']}/{example['scope']} {example['session_id']}: {what}"
                )
        changes = len(result.changes)
        print("nothing would change" if not changes else f"{changes} decisions would change")
    if result.changes:
        raise typer.Exit(1)


def _limits_line(scope: ScopePolicy) -> str:
    """A scope's effective limits, as ``key=value`` words in the policy's own spelling."""
    from server.policy.limits import describe_limits

    return " ".join(f"{key}={value}" for key, value in describe_limits(scope.effective_limits))


@policy_app.command("explain")
def policy_explain(
    identity: Annotated[str, typer.Option("--identity", help="Who asks.")],
    target: Annotated[str, typer.Option("--target", help="Target name.")],
    groups: Annotated[
        str, typer.Option("--groups", help="Comma-separated groups from the identity provider.")
    ] = "",
    scope: Annotated[
        str | None, typer.Option("--scope", help="Scope (default: as dbaccess picks).")
    ] = None,
    ttl: Annotated[str | None, typer.Option("--ttl", help="Session lifetime asked for.")] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="The reason given.")] = None,
    break_glass: Annotated[
        bool, typer.Option("--break-glass", help="Ask to skip a required approval.")
    ] = False,
    policy_file: Annotated[
        Path, typer.Option("--policy", "-p", help="Policy file to evaluate.")
    ] = Path("policy.yaml"),
) -> None:
    """Show what the policy decides for an identity, target and scope, and by which rule."""
    from common.durations import format_duration, parse_duration
    from server.policy import Identity, PolicyError, evaluate, load_policy
    from server.policy.evaluate import effective_groups
    from server.store.db import utcnow

    try:
        policy = load_policy(policy_file)
    except PolicyError as exc:
        for p in exc.problems:
            _say(str(p))
        raise typer.Exit(2) from None
    try:
        wanted = parse_duration(ttl) if ttl else None
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    who = Identity(identity, frozenset(g.strip() for g in groups.split(",") if g.strip()))
    decision = evaluate(
        policy, who, target, scope, wanted, utcnow(), reason=reason, break_glass=break_glass
    )
    outcome = decision.outcome.replace("_", " ")
    lines = [
        f"decision: {outcome}"
        + (" (break-glass: flagged and notified)" if decision.break_glass else ""),
        f"rule:     {decision.rule}",
        f"why:      {decision.reason}",
        f"groups:   {', '.join(sorted(effective_groups(policy, who))) or '-'}",
    ]
    if decision.scope:
        lines.append(f"scope:    {decision.scope}")
    if decision.ttl:
        lines.append(f"ttl:      {format_duration(decision.ttl)}")
    chosen = policy.targets[target].scopes.get(decision.scope) if decision.scope else None
    if chosen is not None:
        lines.append(f"limits:   {_limits_line(chosen)}")
    if decision.approval is not None:
        a = decision.approval
        approvers = [f"group {g}" for g in sorted(a.approver_groups)]
        approvers += [f"identity {i}" for i in sorted(a.approver_identities)]
        lines += [
            f"approval: {a.min_approvals} of: {', '.join(approvers)} "
            f"(not {identity}: nobody approves their own request)",
            f"          pending for {format_duration(a.pending_ttl)}, usable "
            f"{format_duration(a.approval_ttl)} once approved, "
            + ("single use" if a.single_use else "reusable for the session lifetime"),
        ]
    print("\n".join(lines))


class TokenKind(StrEnum):
    service = "service"
    agent = "agent"


@token_app.command("create")
def token_create(
    identity: Annotated[str, typer.Option("--identity", help="Service or agent identity name.")],
    groups: Annotated[str, typer.Option("--groups", help="Comma-separated groups.")] = "",
    ttl: Annotated[str, typer.Option("--ttl", help="Token lifetime, e.g. 30d.")] = "30d",
    kind: Annotated[
        TokenKind,
        typer.Option(
            "--kind",
            help="service, or agent: an AI agent acting for --owner, held to the policy's "
            "agents rules (docs/agents.md).",
        ),
    ] = TokenKind.service,
    owner: Annotated[
        str | None,
        typer.Option("--owner", help="With --kind agent: the person the agent acts for."),
    ] = None,
    store_url: StoreUrlOpt = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Issue an API token (printed once; only its hash is stored).

    An agent token (--kind agent --owner alice) names the agent and the person it
    acts for in audit events and recordings; it can approve nothing, and its owner
    cannot approve its requests.
    """
    from common.durations import parse_duration
    from server.audit import chain
    from server.store.db import IdentityClash

    try:
        lifetime = parse_duration(ttl)
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    owner = owner.strip() if owner else None
    if kind is TokenKind.agent and not owner:
        raise _fail("an agent token needs --owner: the person the agent acts for", 2)
    if kind is not TokenKind.agent and owner:
        raise _fail("--owner is for --kind agent only", 2)
    if owner == identity:
        raise _fail("an agent is not its own owner: give the person it acts for", 2)
    store = _open_store(store_url, config, data_dir)
    group_list = tuple(g.strip() for g in groups.split(",") if g.strip())
    try:
        token, rec = store.create_token(identity, group_list, kind.value, lifetime, owner=owner)
    except IdentityClash as exc:
        raise _fail(f"{exc.message} ({exc.hint})", 2) from None
    expires = rec.expires_at.isoformat() if rec.expires_at else None
    data: dict[str, Any] = {
        "id": rec.id,
        "kind": kind.value,
        "groups": list(group_list),
        "expires_at": expires,
    }
    if owner:
        data["owner"] = owner
    chain.append(store, "token.issued", identity=identity, data=data)
    print(token)
    acting = f" (an agent acting for {owner})" if owner else ""
    _say(f"token {rec.id} for {identity}{acting} expires {rec.expires_at:%Y-%m-%d %H:%M} UTC")


@token_app.command("list")
def token_list(
    all_: Annotated[bool, typer.Option("--all", help="Also revoked and expired tokens.")] = False,
    kind: Annotated[
        str | None,
        typer.Option(
            "--kind", help="Only tokens of this kind: service, agent, user, workload or dev."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
    store_url: StoreUrlOpt = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """List broker tokens (their ids, never the tokens).

    Newest first; only live ones unless --all.
    """
    import json

    from server.store.db import utcnow

    store = _open_store(store_url, config, data_dir)
    records = store.list_tokens(kind=kind, include_inactive=all_)
    if as_json:
        print(json.dumps([r.to_json() for r in records], indent=2))
        return
    now = utcnow()
    rows = [["id", "identity", "kind", "groups", "created", "expires", "state"]]
    for r in records:
        state = "revoked" if r.revoked_at else ("live" if r.active(now) else "expired")
        rows.append(
            [
                r.id,
                r.identity,
                r.kind,
                ",".join(r.groups) or "-",
                f"{r.created_at:%Y-%m-%d %H:%M}",
                f"{r.expires_at:%Y-%m-%d %H:%M}" if r.expires_at else "never",
                state,
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="Token id, as shown by 'token list'.")],
    store_url: StoreUrlOpt = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Revoke a broker token at once.

    The next API call made with it is refused (the CLI exits with 4).
    """
    from server.audit import chain

    store = _open_store(store_url, config, data_dir)
    rec = store.get_token(token_id)
    if rec is None:
        raise _fail(f"no token with id {token_id!r} (see: dbaccess-server token list)", 1)
    if not store.revoke_token(token_id):
        _say(f"token {token_id} of {rec.identity} was revoked already")
        return
    chain.append(
        store,
        "token.revoked",
        identity=rec.identity,
        data={"id": rec.id, "kind": rec.kind, "by": "dbaccess-server token revoke"},
    )
    _say(f"token {token_id} of {rec.identity} revoked")


def main() -> None:
    app(prog_name="dbaccess-server")


if __name__ == "__main__":
    main()


KeyFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--key-file",
        help="The store key file (default: the config's store_key_file, or the dev data "
        "dir's store.key).",
    ),
]


@store_app.command("keygen")
def store_keygen(
    key_file: Annotated[Path, typer.Option("--key-file", help="The key file to write.")],
    key_id: Annotated[
        str | None, typer.Option("--id", help="The new key's id (default: a random one).")
    ] = None,
) -> None:
    """Make a store key: a new key file (mode 0600), or a new key added to the end of
    an existing one, where it opens but does not yet seal (rotation: docs/deploy.md)."""
    from server.store.sealing import StoreKeys, create_key_file, new_key_line

    try:
        if not key_file.exists():
            create_key_file(key_file, key_id)
            _say(f"wrote a new store key file {key_file}")
            return
        keys = StoreKeys.load(key_file)
        line = new_key_line(key_id)
        if line.split()[0] in keys.ids:
            raise _fail(f"{key_file} already holds a key {line.split()[0]!r}", 2)
        text = key_file.read_text(encoding="utf-8")
        with key_file.open("a", encoding="utf-8") as f:
            f.write(("" if text.endswith("\n") or not text else "\n") + line + "\n")
    except DbaccessError as exc:
        raise _fail(exc.message + (f"\nhint: {exc.hint}" if exc.hint else ""), 2) from None
    _say(
        f"added key {line.split()[0]!r} at the end of {key_file}: it opens but does not seal; "
        "once every broker has this file, move its line to the top, restart them, and run "
        "'dbaccess-server store rekey'"
    )


@store_app.command("rekey")
def store_rekey(
    key_file: KeyFileOpt = None,
    store_url: StoreUrlOpt = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Seal every secret the store keeps with the newest key of the key file (the first
    line), and say which older keys no longer seal anything."""
    from server.audit import chain
    from server.store.db import Store
    from server.store.sealing import StoreKeys

    if key_file is None and config is not None:
        from server.config import load_config

        try:
            key_file = load_config(config).store_key_file
        except DbaccessError as exc:
            raise _fail(exc.message, 2) from None
    if key_file is None and data_dir is not None:
        key_file = data_dir.resolve() / "store.key"
    if key_file is None:
        raise _fail("give --key-file, or a --config with store_key_file", 2)
    try:
        keys = StoreKeys.load(key_file)
    except DbaccessError as exc:
        raise _fail(exc.message + (f"\nhint: {exc.hint}" if exc.hint else ""), 2) from None
    opened = _open_store(store_url, config, data_dir)
    store = Store(opened.engine, keys)
    try:
        store.check_keys()
        changed = store.seal_at_rest(rekey=True)
        counts = store.secrets_at_rest()
        chain.append(store, "store.rekeyed", data={"key": keys.newest.id, "resealed": changed})
    except DbaccessError as exc:
        raise _fail(exc.message + (f"\nhint: {exc.hint}" if exc.hint else "")) from None
    finally:
        store.close()
    _say(f"re-sealed {changed} secrets with key {keys.newest.id!r}")
    idle = [k for k in keys.ids[1:] if not counts.get(k)]
    if idle:
        _say(f"keys {', '.join(repr(k) for k in idle)} seal nothing now and may leave the file")
