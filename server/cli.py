"""dbaccess-server: run the broker (dev or from a config file) and administer it.

``dev`` is the embedded default: everything on loopback, a SQLite store and, when
no target is given, a throwaway PostgreSQL cluster with demo data, plus a CLI
profile and token so that ``dbaccess`` works at once.
"""

from __future__ import annotations

import logging
import sys
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer

from server.errors import DbaccessError

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
token_app = typer.Typer(help="Issue broker API tokens for service accounts.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
app.add_typer(token_app, name="token")

DEV_IDENTITY = "dev"
DEV_GROUPS = ("dev", "admin")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _fail(message: str, code: int = 1) -> typer.Exit:
    _say(f"dbaccess-server: error: {message}")
    return typer.Exit(code)


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


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
        bool, typer.Option("--write-profile/--no-write-profile", help="Log the CLI in as 'dev'.")
    ] = True,
    reaper_interval: Annotated[float, typer.Option("--reaper-interval", help="Seconds.")] = 30.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run broker and gateway on loopback with a demo target (for trying dbaccess out)."""
    _logging(verbose)
    from server import runtime
    from server.demo.provision import provision_demo, write_admin_dsn_file

    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    cluster = None
    try:
        if target_dsn:
            from server.demo.target import prepare_target

            admin_dsn = prepare_target(target_dsn)
        else:
            from server.pgcluster import LocalCluster

            cluster = LocalCluster(data_dir / "pg")
            if not cluster.initialized():
                _say(f"creating a PostgreSQL cluster in {cluster.data_dir} ...")
                cluster.init()
            cluster.start()
            admin_dsn = provision_demo(cluster).admin_dsn
        write_admin_dsn_file(data_dir / "admin.dsn", admin_dsn)
        policy_path = data_dir / "policy.yaml"
        if not policy_path.exists():
            template = resources.files("server.demo") / "policy.yaml"
            policy_path.write_text(template.read_text())

        opts = runtime.RuntimeOptions(
            api_host="127.0.0.1",
            api_port=api_port,
            gateway_host="127.0.0.1",
            gateway_port=gateway_port,
            policy_path=policy_path,
            store_url=f"sqlite:///{data_dir / 'store.db'}",
            reaper_interval=reaper_interval,
        )

        where_target = (
            f"throwaway cluster on port {cluster.port}" if cluster else "from --target-dsn"
        )

        def ready(rt: runtime.Runtime) -> None:
            lines = [
                "dbaccess dev broker is running",
                f"  API:      {rt.api_url}",
                f"  gateway:  {rt.gateway.host}:{rt.gateway.port}",
                f"  target:   demo ({where_target})",
                f"  policy:   {policy_path}",
                f"  store:    {data_dir / 'store.db'}",
            ]
            if write_profile:
                where = _write_cli_profile(rt)
                lines.append(f"  CLI:      logged in as '{DEV_IDENTITY}' (token in {where})")
            lines.append(
                "try: dbaccess targets; dbaccess connect demo   (Ctrl-C here stops everything)"
            )
            _say("\n".join(lines))

        runtime.run(opts, ready)
    except DbaccessError as exc:
        raise _fail(exc.message + (f"\nhint: {exc.hint}" if exc.hint else "")) from None
    finally:
        if cluster is not None and cluster.running():
            cluster.stop()
    _say("dbaccess dev broker stopped")


def _write_cli_profile(rt: object) -> str:
    from brokercli import tokens
    from brokercli.config import load_profile, save_profile
    from server.runtime import Runtime

    assert isinstance(rt, Runtime)
    from datetime import timedelta

    token, _rec = rt.store.create_token(DEV_IDENTITY, DEV_GROUPS, "dev", timedelta(days=7))
    profile = load_profile()
    profile["server"] = rt.api_url
    profile.pop("ca_file", None)
    save_profile(profile)
    return tokens.save(rt.api_url, token)


@app.command("run")
def run_cmd(
    config: Annotated[Path, typer.Option("--config", "-c", help="Server config file (YAML).")],
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the broker from a config file (production)."""
    _logging(verbose)
    from server import runtime
    from server.config import load_config, parse_hostport

    try:
        cfg = load_config(config)
        api_host, api_port = parse_hostport(cfg.api_listen)
        gw_host, gw_port = parse_hostport(cfg.gateway_listen)
        pub_host = pub_port = None
        if cfg.public_gateway_address:
            pub_host, pub_port = parse_hostport(cfg.public_gateway_address)
        opts = runtime.RuntimeOptions(
            api_host=api_host,
            api_port=api_port,
            gateway_host=gw_host,
            gateway_port=gw_port,
            policy_path=Path(cfg.policy),
            store_url=cfg.store_url,
            reaper_interval=cfg.reaper_interval.total_seconds(),
            public_gateway_host=pub_host,
            public_gateway_port=pub_port,
            max_connections_per_session=cfg.session_max_connections,
        )

        def ready(rt: runtime.Runtime) -> None:
            _say(f"dbaccess broker: API {rt.api_url}, gateway {rt.gateway.host}:{rt.gateway.port}")

        runtime.run(opts, ready)
    except DbaccessError as exc:
        raise _fail(exc.message + (f"\nhint: {exc.hint}" if exc.hint else "")) from None


@policy_app.command("check")
def policy_check(file: Annotated[Path, typer.Argument(help="Policy file to validate.")]) -> None:
    """Validate a policy file; errors name the file, line and key."""
    from server.policy import PolicyError, load_policy

    try:
        policy = load_policy(file)
    except PolicyError as exc:
        problems = getattr(exc, "problems", None) or [exc.message]
        for p in problems:
            _say(str(p))
        raise typer.Exit(2) from None
    scopes = sum(len(t.scopes) for t in policy.targets.values())
    _say(f"{file}: OK ({len(policy.targets)} targets, {scopes} scopes)")


@token_app.command("create")
def token_create(
    identity: Annotated[str, typer.Option("--identity", help="Service identity name.")],
    groups: Annotated[str, typer.Option("--groups", help="Comma-separated groups.")] = "",
    ttl: Annotated[str, typer.Option("--ttl", help="Token lifetime, e.g. 30d.")] = "30d",
    store_url: Annotated[
        str | None, typer.Option("--store-url", help="Store URL (default: from --config).")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c")] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="A dev data dir (uses its store).")
    ] = None,
) -> None:
    """Issue an API token (printed once; only its hash is stored)."""
    from server.durations import parse_duration
    from server.store.db import Store

    try:
        lifetime = parse_duration(ttl)
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    url = store_url
    if url is None and config is not None:
        from server.config import load_config

        url = load_config(config).store_url
    if url is None and data_dir is not None:
        url = f"sqlite:///{data_dir.resolve() / 'store.db'}"
    if url is None:
        raise _fail("give --store-url, --config or --data-dir", 2)
    store = Store.open(url)
    group_list = tuple(g.strip() for g in groups.split(",") if g.strip())
    token, rec = store.create_token(identity, group_list, "service", lifetime)
    from server.audit import chain

    chain.append(
        store,
        "token.issued",
        identity=identity,
        data={"token_id": rec.id, "groups": list(group_list)},
    )
    print(token)
    _say(f"token {rec.id} for {identity} expires {rec.expires_at:%Y-%m-%d %H:%M} UTC")


def main() -> None:
    app(prog_name="dbaccess-server")


if __name__ == "__main__":
    main()
