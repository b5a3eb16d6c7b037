"""Server settings: defaults < file < environment < flags, errors saying where, address helpers."""

from __future__ import annotations

import socket
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from server.config import (
    ConfigError,
    HostPort,
    ServerConfig,
    TlsConfig,
    load_config,
    parse_hostport,
)
from server.errors import InvalidInput

FULL = textwrap.dedent(
    """\
    api_listen: 0.0.0.0:8700
    gateway_listen: "[::]:8701"
    public_api_url: https://broker.example.com:8700/
    public_gateway_address: broker.example.com:8701
    data_dir: state
    store_url: sqlite:///{data_dir}/broker.db
    policy: policies/main.yaml
    tls: {cert: tls/server.crt, key: tls/server.key, ca: tls/ca.crt}
    reaper_interval: 1m30s
    session_max_connections: 5
    """
)


def write(directory: Path, text: str, name: str = "server.yaml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def problems_of(
    path: Path | None,
    overrides: dict[str, object] | None = None,
    environ: dict[str, str] | None = None,
) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides, environ=environ or {})
    assert isinstance(caught.value, InvalidInput)
    return [str(p) for p in caught.value.problems]


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None, environ={})
    assert config == ServerConfig(data_dir=tmp_path)
    assert config.api_listen == "127.0.0.1:8700"
    assert config.gateway_listen == "127.0.0.1:8701"
    assert config.store_url == f"sqlite:///{tmp_path}/store.db"
    assert config.policy == tmp_path / "policy.yaml"
    assert config.tls is None
    assert config.reaper_interval == timedelta(seconds=30)
    # Deprecated: the policy's limits.max_connections_per_session decides unless it is set.
    assert config.session_max_connections is None
    assert config.source is None


def test_full_file_with_paths_relative_to_it(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    config = load_config(path, environ={})
    assert config.api_listen == "0.0.0.0:8700"
    assert config.gateway_listen == "[::]:8701"
    assert config.public_api_url == "https://broker.example.com:8700"
    assert config.public_gateway_address == "broker.example.com:8701"
    assert config.data_dir == tmp_path / "state"
    assert config.store_url == f"sqlite:///{tmp_path}/state/broker.db"
    assert config.policy == tmp_path / "policies" / "main.yaml"
    assert config.tls == TlsConfig(
        cert=tmp_path / "tls" / "server.crt",
        key=tmp_path / "tls" / "server.key",
        ca=tmp_path / "tls" / "ca.crt",
    )
    assert config.reaper_interval == timedelta(seconds=90)
    assert config.session_max_connections == 5
    assert config.source == str(path)


@pytest.mark.parametrize("text", ["", "# all defaults\n"])
def test_empty_file_means_defaults_next_to_it(tmp_path: Path, text: str) -> None:
    config = load_config(write(tmp_path, text), environ={})
    assert config.data_dir == tmp_path
    assert config.policy == tmp_path / "policy.yaml"
    assert config.store_url == f"sqlite:///{tmp_path}/store.db"


def test_policy_stays_next_to_the_file_when_data_dir_moves(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "data_dir: /var/lib/dbaccess\n"), environ={})
    assert config.policy == tmp_path / "policy.yaml"
    assert config.store_url == "sqlite:////var/lib/dbaccess/store.db"


def test_layers_file_then_environment_then_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "api_listen: 127.0.0.1:1111\ngateway_listen: 127.0.0.1:2222\n")
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    environ = {
        "DBACCESS_SERVER_API_LISTEN": "127.0.0.1:3333",
        "DBACCESS_SERVER_GATEWAY_LISTEN": "127.0.0.1:4444",
        "DBACCESS_SERVER_POLICY": "from-env.yaml",
        "DBACCESS_SERVER_REAPER_INTERVAL": "",
        "DBACCESS_SERVER_SOMETHING_ELSE": "ignored",
    }
    overrides: dict[str, object] = {"api_listen": "127.0.0.1:5555", "gateway_listen": None}
    config = load_config(path, overrides, environ=environ)
    assert config.api_listen == "127.0.0.1:5555"
    assert config.gateway_listen == "127.0.0.1:4444"
    # relative paths from the environment or flags are relative to the working directory
    assert config.policy == workdir / "from-env.yaml"
    assert config.reaper_interval == timedelta(seconds=30)


def test_real_environment_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBACCESS_SERVER_SESSION_MAX_CONNECTIONS", "7")
    monkeypatch.setenv("DBACCESS_SERVER_TLS_CERT", str(tmp_path / "c.crt"))
    monkeypatch.setenv("DBACCESS_SERVER_TLS_KEY", str(tmp_path / "c.key"))
    config = load_config(write(tmp_path, ""))
    assert config.session_max_connections == 7
    assert config.tls == TlsConfig(cert=tmp_path / "c.crt", key=tmp_path / "c.key")


def test_typed_flag_values(tmp_path: Path) -> None:
    overrides: dict[str, object] = {
        "data-dir": tmp_path / "d",
        "session_max_connections": 3,
        "reaper_interval": timedelta(minutes=2),
        "api_listen": ("::1", 0),
        "tls.cert": tmp_path / "s.crt",
        "tls_key": str(tmp_path / "s.key"),
    }
    config = load_config(None, overrides, environ={})
    assert config.data_dir == tmp_path / "d"
    assert config.session_max_connections == 3
    assert config.reaper_interval == timedelta(minutes=2)
    assert config.api_listen == "[::1]:0"
    assert config.tls == TlsConfig(cert=tmp_path / "s.crt", key=tmp_path / "s.key")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///{data_dir}/store.db", "sqlite:///{base}/data/store.db"),
        ("sqlite:///store.db", "sqlite:///{base}/store.db"),
        ("sqlite:////abs/store.db", "sqlite:////abs/store.db"),
        ("sqlite:///db/s.db?timeout=5", "sqlite:///{base}/db/s.db?timeout=5"),
        ("sqlite://", "sqlite://"),
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("postgresql+psycopg://u:p@db:5432/broker", "postgresql+psycopg://u:p@db:5432/broker"),
        ("postgresql://u@db/broker", "postgresql+psycopg://u@db/broker"),
        ("postgres://u@db/broker", "postgresql+psycopg://u@db/broker"),
    ],
)
def test_store_url_forms(tmp_path: Path, given: str, expected: str) -> None:
    path = write(tmp_path, f"data_dir: data\nstore_url: {given!r}\n".replace("'", '"'))
    config = load_config(path, environ={})
    assert config.store_url == expected.replace("{base}", str(tmp_path))


def test_store_url_password_not_in_repr() -> None:
    config = ServerConfig(data_dir=Path("/d"), store_url="postgresql+psycopg://u:s3cret@db/b")
    assert "s3cret" not in repr(config)


ERROR_CASES = [
    pytest.param(
        "api_listn: 127.0.0.1:8700\n",
        ["server.yaml:1: api_listn: unknown key (did you mean 'api_listen'?)"],
        id="misspelt-key",
    ),
    pytest.param(
        "api_listen: 127.0.0.1\n",
        ["server.yaml:1: api_listen: '127.0.0.1' is not host:port (e.g. 127.0.0.1:8700)"],
        id="listen-without-port",
    ),
    pytest.param(
        "gateway_listen: 127.0.0.1:99999\n",
        [
            "server.yaml:1: gateway_listen: "
            "'127.0.0.1:99999': the port must be a number from 0 to 65535"
        ],
        id="port-too-big",
    ),
    pytest.param(
        "api_listen: 127.0.0.1:8700\nreaper_interval: 30\n",
        ["server.yaml:2: reaper_interval: '30' is not a duration: add a unit, e.g. 30m or 30s"],
        id="bare-number-interval",
    ),
    pytest.param(
        "reaper_interval: 0s\n",
        ["server.yaml:1: reaper_interval: '0s' is too short: it must be longer than zero"],
        id="zero-interval",
    ),
    pytest.param(
        "session_max_connections: 0\n",
        ["server.yaml:1: session_max_connections: '0' is not a whole number of 1 or more"],
        id="zero-connections",
    ),
    pytest.param(
        "tls:\n  cert: a.crt\n",
        ["server.yaml:2: tls.cert: tls needs both cert and key"],
        id="tls-without-key",
    ),
    pytest.param(
        "tls:\n  cert: a.crt\n  key: a.key\n  certs: b.crt\n",
        ["server.yaml:4: tls.certs: unknown key (did you mean 'cert'?)"],
        id="tls-unknown-key",
    ),
    pytest.param(
        "tls: [a.crt, a.key]\n",
        ["server.yaml:1: tls: expected a mapping, got a list"],
        id="tls-a-list",
    ),
    pytest.param(
        "policy: a.yaml\npolicy: b.yaml\n",
        ["server.yaml:2: policy: duplicate key (first given at line 1)"],
        id="duplicate-key",
    ),
    pytest.param(
        "policy:\n",
        ["server.yaml:1: policy: a value is required here"],
        id="empty-value",
    ),
    pytest.param(
        "public_gateway_address: broker.example.com:0\n",
        [
            "server.yaml:1: public_gateway_address: "
            "'broker.example.com:0': clients need a real port, not 0"
        ],
        id="public-port-0",
    ),
    pytest.param(
        "public_api_url: ftp://broker\n",
        [
            "server.yaml:1: public_api_url: 'ftp://broker' is not an http(s) URL "
            "such as https://broker.example.com:8700"
        ],
        id="public-url-scheme",
    ),
    pytest.param(
        "store_url: mysql://root:s3cret@db/broker\n",
        [
            "server.yaml:1: store_url: unsupported store 'mysql' "
            "(use sqlite:///path/store.db or postgresql+psycopg://...)"
        ],
        id="store-scheme",
    ),
    pytest.param(
        "store_url: sqlite:/store.db\n",
        [
            "server.yaml:1: store_url: not a URL (use sqlite:///path/store.db or postgresql+psycopg://...)"
        ],
        id="store-not-a-url",
    ),
    pytest.param(
        "api_listen: [127.0.0.1, 8700]\n",
        ["server.yaml:1: api_listen: expected a single value, got a list"],
        id="listen-a-list",
    ),
    pytest.param(
        "api_listen: ::1:8700\n",
        [
            "server.yaml:1: api_listen: "
            "'::1:8700': put an IPv6 address in brackets (e.g. [::1]:8700)"
        ],
        id="ipv6-without-brackets",
    ),
    pytest.param(
        "- api_listen: 127.0.0.1:8700\n",
        ["server.yaml:1: expected a mapping, got a list"],
        id="root-a-list",
    ),
    pytest.param(
        "api_listen: [127.0.0.1:8700\n",
        [
            "server.yaml:2: YAML syntax error: expected ',' or ']', but got '<stream end>' "
            "(while parsing a flow sequence)"
        ],
        id="yaml-syntax",
    ),
]


@pytest.mark.parametrize(("text", "expected"), ERROR_CASES)
def test_file_errors_name_line_and_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, expected: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, text)
    assert problems_of(Path("server.yaml")) == expected


def test_environment_and_flag_errors_name_their_origin(tmp_path: Path) -> None:
    path = write(tmp_path, "reaper_interval: 1 minute\n")
    environ = {"DBACCESS_SERVER_API_LISTEN": "localhost", "DBACCESS_SERVER_TLS_KEY": "k.pem"}
    overrides: dict[str, object] = {
        "gateway_listen": "127.0.0.1:x",
        "colour": "blue",
        "session_max_connections": True,
    }
    assert problems_of(path, overrides, environ) == [
        "command line: colour: unknown setting",
        "command line: session_max_connections: unusable value True",
        f"{path}:1: reaper_interval: '1 minute' is not a duration (use e.g. 30m, 8h, 1d)",
        "environment: DBACCESS_SERVER_API_LISTEN: 'localhost' is not host:port "
        "(e.g. 127.0.0.1:8700)",
        "command line: gateway_listen: '127.0.0.1:x': the port must be a number from 0 to 65535",
        "environment: DBACCESS_SERVER_TLS_KEY: tls needs both cert and key",
    ]


def test_a_store_url_with_a_password_is_never_echoed(tmp_path: Path) -> None:
    environ = {"DBACCESS_SERVER_STORE_URL": "host=db password=s3cret"}
    (problem,) = problems_of(None, environ=environ)
    assert problem.startswith("environment: DBACCESS_SERVER_STORE_URL: not a URL")
    assert "s3cret" not in problem


def test_missing_config_file(tmp_path: Path) -> None:
    assert problems_of(tmp_path / "nope.yaml") == [
        f"{tmp_path / 'nope.yaml'}: config file not found"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8700", ("127.0.0.1", 8700)),
        ("localhost:0", ("localhost", 0)),
        ("broker.example.com:443", ("broker.example.com", 443)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),  # noqa: S104
        ("[::1]:8701", ("::1", 8701)),
        ("[::]:80", ("::", 80)),
        ("[fe80::1%eth0]:5432", ("fe80::1%eth0", 5432)),
        (" 127.0.0.1:1 ", ("127.0.0.1", 1)),
    ],
)
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    parsed = parse_hostport(text)
    assert parsed == expected
    assert parse_hostport(str(parsed)) == parsed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("127.0.0.1", "is not host:port"),
        (":8700", "has no host (write 0.0.0.0:8700 for every interface)"),
        ("::1:8700", "put an IPv6 address in brackets"),
        ("[::1]8700", "is not [address]:port"),
        ("[::1:8700", "is not [address]:port"),
        ("[nothost]:1", "is not an IPv6 address"),
        ("host:65536", "the port must be a number from 0 to 65535"),
        ("host:-1", "the port must be a number from 0 to 65535"),
        ("host:http", "the port must be a number from 0 to 65535"),
        ("host:", "the port must be a number from 0 to 65535"),
        ("my host:80", "is not a host name or address"),
        ("http://host:80", "is a URL; give host:port"),
        ("host/x:80", "is not a host name or address"),
    ],
)
def test_parse_hostport_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_hostport(text)
    assert message in str(caught.value)


def test_for_dev_listens_on_loopback_with_free_ports(tmp_path: Path) -> None:
    config = ServerConfig.for_dev(tmp_path)
    assert (config.api_listen, config.gateway_listen) == ("127.0.0.1:0", "127.0.0.1:0")
    assert config.data_dir == tmp_path
    assert config.policy == tmp_path / "policy.yaml"
    assert config.store_url == f"sqlite:///{tmp_path}/store.db"
    assert config.advertised_api_url(bound_port=41234) == "http://127.0.0.1:41234"
    assert config.advertised_gateway_address(bound_port=41235) == HostPort("127.0.0.1", 41235)
    with pytest.raises(ValueError, match="pass the port it is bound to"):
        config.advertised_api_url()


def test_for_dev_on_ipv6_loopback_with_tls(tmp_path: Path) -> None:
    tls = TlsConfig(cert=tmp_path / "c.crt", key=tmp_path / "c.key")
    config = ServerConfig.for_dev(tmp_path, host="::1", api_port=8700, tls=tls)
    assert config.api_listen == "[::1]:8700"
    assert config.advertised_api_url() == "https://[::1]:8700"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.1", "broker.example.com"])  # noqa: S104
def test_for_dev_refuses_non_loopback(tmp_path: Path, host: str) -> None:
    with pytest.raises(InvalidInput, match="loopback only"):
        ServerConfig.for_dev(tmp_path, host=host)


def test_ensure_loopback_on_a_loaded_config(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "gateway_listen: 0.0.0.0:8701\n"), environ={})
    with pytest.raises(InvalidInput) as caught:
        config.ensure_loopback()
    assert (
        caught.value.message == "the dev mode listens on loopback only, not on gateway 0.0.0.0:8701"
    )
    load_config(write(tmp_path, "api_listen: '[::1]:0'\n"), environ={}).ensure_loopback()


def test_advertised_addresses(tmp_path: Path) -> None:
    public = load_config(write(tmp_path, FULL), environ={})
    assert public.advertised_api_url() == "https://broker.example.com:8700"
    assert public.advertised_gateway_address(bound_port=1) == HostPort("broker.example.com", 8701)
    wildcard = load_config(write(tmp_path, "api_listen: 0.0.0.0:8700\n"), environ={})
    assert wildcard.advertised_api_url() == f"http://{socket.getfqdn()}:8700"
    assert wildcard.advertised_gateway_address() == HostPort("127.0.0.1", 8701)


@pytest.mark.parametrize(
    ("text", "size"),
    [("262144", 262_144), ("256KiB", 262_144), ("1 MiB", 1_048_576), ("2MB", 2_000_000)],
)
def test_analysis_limits(tmp_path: Path, text: str, size: int) -> None:
    path = write(tmp_path, f"gateway_max_statement_size: {text}\n")
    config = load_config(path, environ={"DBACCESS_SERVER_GATEWAY_ANALYSIS_CPU_BUDGET": "0.25"})
    assert config.gateway_max_statement_size == size
    assert config.gateway_analysis_cpu_budget == 0.25


def test_analysis_limit_errors_name_their_origin(tmp_path: Path) -> None:
    path = write(tmp_path, "gateway_max_statement_size: 1 GB-ish\n")
    environ = {"DBACCESS_SERVER_GATEWAY_ANALYSIS_CPU_BUDGET": "0"}
    assert problems_of(path, environ=environ) == [
        f"{path}:1: gateway_max_statement_size: '1 GB-ish' is not a size such as "
        "262144, 256KiB or 1MiB",
        "environment: DBACCESS_SERVER_GATEWAY_ANALYSIS_CPU_BUDGET: '0' must be a number above zero",
    ]


def test_role_defaults_to_all_and_comes_from_file_environment_or_flag(tmp_path: Path) -> None:
    assert load_config(None, environ={}).role == "all"
    config = tmp_path / "server.yaml"
    config.write_text("role: gateway\n")
    assert load_config(config, environ={}).role == "gateway"
    env = {"DBACCESS_SERVER_ROLE": "all"}
    assert load_config(config, environ=env).role == "all"
    flagged = load_config(config, {"role": "api", "public_gateway_address": "gw:6432"}, environ={})
    assert flagged.role == "api"


def test_an_unknown_role_names_the_roles(tmp_path: Path) -> None:
    config = tmp_path / "server.yaml"
    config.write_text("role: proxy\n")
    with pytest.raises(ConfigError) as err:
        load_config(config, environ={})
    assert f"{config}:1: role: 'proxy' is not a role (one of: all, api, gateway)" in str(err.value)


def test_an_api_only_broker_needs_the_gateway_replicas_address(tmp_path: Path) -> None:
    config = tmp_path / "server.yaml"
    config.write_text("api_listen: 127.0.0.1:8700\nrole: api\n")
    with pytest.raises(ConfigError) as err:
        load_config(config, environ={})
    assert f"{config}:2: role:" in str(err.value)
    assert "give public_gateway_address" in str(err.value)
    env = {"DBACCESS_SERVER_PUBLIC_GATEWAY_ADDRESS": "gateways.example.com:6432"}
    cfg = load_config(config, environ=env)
    assert cfg.public_gateway_address == "gateways.example.com:6432"


def test_store_key_file_from_the_file_or_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "store_key_file: keys/store.key\n")
    assert load_config(path, environ={}).store_key_file == tmp_path / "keys" / "store.key"
    environ = {"DBACCESS_SERVER_STORE_KEY_FILE": "/run/secrets/store.key"}
    assert load_config(path, environ=environ).store_key_file == Path("/run/secrets/store.key")
    assert load_config(write(tmp_path, ""), environ={}).store_key_file is None
