"""The pinning decision as a table: every way of changing a limit, refused; reading them, not."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from server.gateway.guardrails import Outcome
from server.gateway.pinning import (
    ADVISORY_RULE,
    PINNED_RULE,
    LimitPins,
    decide_pins,
    startup_limit_hit,
    startup_refusal,
)
from server.gateway.sqlcheck import analyze
from server.policy.model import READ_LIMITS

PINS = LimitPins.of(READ_LIMITS, "demo", "read")
PINNED = PINNED_RULE
LOCKS = ADVISORY_RULE


def _decide(sql: str, pins: LimitPins = PINS, params: tuple[str | None, ...] | None = None) -> str:
    decision = decide_pins(analyze(sql, params=params), sql, pins)
    if decision.outcome is Outcome.ALLOW:
        return "allow"
    assert decision.outcome is Outcome.BLOCK
    return decision.rule


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        # reading the limits
        ("show statement_timeout", "allow"),
        ("select current_setting('statement_timeout')", "allow"),
        ("select name, setting from pg_settings where name like '%timeout'", "allow"),
        ("select 1", "allow"),
        # SET in every form
        ("set statement_timeout = 0", PINNED),
        ("SET statement_timeout TO '1h'", PINNED),
        ("set local statement_timeout = 0", PINNED),
        ("set session lock_timeout = 0", PINNED),
        ('set "statement_timeout" = 0', PINNED),
        ('SET "STATEMENT_TIMEOUT" = 0', PINNED),
        ("set Idle_In_Transaction_Session_Timeout = 0", PINNED),
        ("set idle_session_timeout to default", PINNED),
        ("set temp_file_limit = -1", PINNED),
        ("set statement_timeout = default", PINNED),
        ("begin; set local statement_timeout = 0; select pg_sleep(10); commit", PINNED),
        ("select 1; set lock_timeout = 0", PINNED),
        # RESET
        ("reset statement_timeout", PINNED),
        ("RESET lock_timeout", PINNED),
        ("reset all", PINNED),
        ("discard all", PINNED),
        # set_config in every spelling
        ("select set_config('statement_timeout', '0', false)", PINNED),
        ("select SET_CONFIG('statement_timeout', '0', false)", PINNED),
        ("select pg_catalog.set_config('lock_timeout', '0', true)", PINNED),
        ("select \"set_config\"('statement_timeout', '0', false)", PINNED),
        ("select set_config('STATEMENT_TIMEOUT', '0', false)", PINNED),
        ("select set_config('statement_'||'timeout', '0', false)", PINNED),
        ("select set_config(lower('STATEMENT_TIMEOUT'), '0', false)", PINNED),
        ("select set_config(name, '0', false) from pg_settings", PINNED),
        ("select set_config('application_name', 'x', false)", "allow"),
        ("select * from (select set_config('statement_timeout', '0', false)) s", PINNED),
        ("with s as (select set_config('statement_timeout','0',false)) select * from s", PINNED),
        ("update pg_settings set setting = '0' where name = 'statement_timeout'", PINNED),
        ("select set_config(setting_name => 'statement_timeout', new_value => '0')", PINNED),
        ("declare c cursor for select set_config('statement_timeout', '0', false)", PINNED),
        ("copy (select set_config('statement_timeout', '0', false)) to stdout", PINNED),
        ("values (set_config('lock_timeout', '0', false))", PINNED),
        ("explain analyze select set_config('statement_timeout', '0', false)", PINNED),
        ("prepare p as select set_config('statement_timeout', '0', false)", PINNED),
        ("create view v as select set_config('statement_timeout', '0', false)", PINNED),
        ("create table t (x text default set_config('statement_timeout', '0', false))", PINNED),
        ("create index on t ((set_config('lock_timeout', '0', false)))", PINNED),
        (
            "create rule r as on insert to t do also "
            "select set_config('statement_timeout', '0', false)",
            PINNED,
        ),
        # settings attached to the role, the database, the system
        ("alter role current_user set statement_timeout = 0", PINNED),
        ('ALTER ROLE dba_x SET "statement_timeout" TO 0', PINNED),
        ("alter user current_user set lock_timeout = 0", PINNED),
        ("alter role current_user reset all", PINNED),
        ("alter role current_user in database demo set idle_session_timeout = 0", PINNED),
        ("alter database demo set statement_timeout = 0", PINNED),
        ("alter system set statement_timeout = 0", PINNED),
        ("alter role current_user set search_path = public", "allow"),  # the guardrails' call
        # code the gateway can see
        ("do $$ begin set statement_timeout = 0; end $$", PINNED),
        ("do $$ begin perform set_config('statement_'||'timeout', '0', false); end $$", PINNED),
        ("do $$ begin execute 'set statement' || '_timeout = 0'; end $$", PINNED),
        ("do $$ begin execute format('%s', 'x'); end $$", PINNED),
        ("do language plpgsql $$ begin reset all; end $$", PINNED),
        ("do $$ begin raise notice 'hi'; end $$", "allow"),
        ("do language plperl $$ 1 $$", PINNED),
        (
            "create function f() returns void language sql set statement_timeout = 0 "
            "as 'select pg_sleep(100)'",
            PINNED,
        ),
        (
            "create function f() returns int language plpgsql as $$ begin "
            "perform set_config('lock_timeout', '0', true); return 1; end $$",
            PINNED,
        ),
        ("alter function f() set lock_timeout = 0", PINNED),
        ("alter function f() reset all", PINNED),
        ("create function f() returns int language sql as 'select 1'", "allow"),
        ("create function f() returns int language python as 'return 1'", PINNED),
        # names the scan cannot read: Unicode escapes, a language behind a comment
        (
            "do $$ begin perform U&\"set\\005fconfig\"('statement' || '_timeout', '0', false);"
            " end $$",
            PINNED,
        ),
        ('do $$ begin set U&"statement\\005ftimeout" = 0; end $$', PINNED),
        ('do $$ begin alter role current_user set U&"lock\\005ftimeout" = 0; end $$', PINNED),
        ("create function f() returns int language/**/plperl as $$ 1 $$", PINNED),
        ("create function f() returns int language /* /* */ sql */ plperl as $$ 1 $$", PINNED),
        ("create function f() returns int language -- sql\n plperl as $$ 1 $$", PINNED),
        # a -- comment ends at a carriage return too: PostgreSQL reads plperl here
        ("create function f() returns int language --\rplperl /*\nsql */ as $$ 1 $$", PINNED),
        ("do language --\rplperl /*\nsql */ $$ 1 $$", PINNED),
        ("do language/**/plperl $$ 1 $$", PINNED),
        ("create function f() returns int language /* c */ sql as 'select 1'", "allow"),
        # bodies written as escape strings: PostgreSQL runs them decoded
        (
            "do E'begin perform s\\x65t_config(''st\\x61tement_timeout'', ''0'', false); end'",
            PINNED,
        ),
        (
            "do language plpgsql E'begin perform s\\145t_config(''st\\141tement_timeout'', "
            "''0'', false); end'",
            PINNED,
        ),
        ("create procedure p() language sql as E'set lock\\u005ftimeout = 0'", PINNED),
        ("create procedure p() language sql as E'set lock\\U0000005Ftimeout = 0'", PINNED),
        ("create function f() returns int language sql as e'select 1;\\nr\\eset\\tall'", PINNED),
        ("do E'begin\\nexecute ''select 1''; end'", PINNED),
        ("do E'begin perform pg_\\x61dvisory_lock(1); end'", LOCKS),
        ("create function f() returns text language sql as E'select ''a\\nb'''", "allow"),
        # functions named without a call, queries stored to run later
        (
            "create aggregate a(text, bool) "
            "(sfunc = set_config, stype = text, initcond = 'statement_timeout')",
            PINNED,
        ),
        ("create aggregate a(text, bool) (sfunc = pg_catalog.set_config, stype = text)", PINNED),
        ("create view v as select * from pg_settings", PINNED),
        ("create temp view v as select * from pg_catalog.pg_settings", PINNED),
        ("create table statement_timeout_log (statement_timeout interval)", "allow"),
        ("create operator ### (leftarg = text, rightarg = text, function = textcat)", "allow"),
        # advisory locks
        ("select pg_advisory_lock(1)", LOCKS),
        ("select pg_try_advisory_lock(1)", LOCKS),
        ("select pg_advisory_lock_shared(1, 2)", LOCKS),
        ("select pg_try_advisory_lock_shared(1)", LOCKS),
        ("select pg_advisory_xact_lock(1)", LOCKS),
        ("select pg_try_advisory_xact_lock(1)", LOCKS),
        ("select pg_advisory_xact_lock_shared(1)", LOCKS),
        ("select pg_catalog.pg_advisory_lock(1)", LOCKS),
        ("select PG_ADVISORY_LOCK(1)", LOCKS),
        ("select 1 from generate_series(1, 3) g where pg_try_advisory_lock(g)", LOCKS),
        ("select * from pg_advisory_lock(1)", LOCKS),
        ("prepare p as select pg_advisory_lock(1)", LOCKS),
        ("do $$ begin perform pg_advisory_lock(1); end $$", LOCKS),
        (
            "create function f() returns void language sql as $$ select pg_advisory_lock(1) $$",
            LOCKS,
        ),
        (
            "create function f() returns void language plpgsql as $$ begin "
            "perform pg_catalog.pg_try_advisory_xact_lock_shared(1); end $$",
            LOCKS,
        ),
        ("create aggregate a(bigint) (sfunc = pg_try_advisory_lock, stype = bigint)", LOCKS),
        ("do $$ begin perform pg_advisory_unlock(1); end $$", "allow"),
        ("select pg_advisory_unlock(1)", "allow"),
        ("select pg_advisory_unlock_all()", "allow"),
    ],
)
def test_pinning(sql: str, expected: str) -> None:
    assert _decide(sql) == expected


def test_a_parameter_naming_the_setting_is_judged_with_its_value() -> None:
    sql = "select set_config($1, $2, false)"
    assert _decide(sql) == PINNED  # unknown at Parse: the guard waits for Bind
    assert _decide(sql, params=("statement_timeout", "0")) == PINNED
    assert _decide(sql, params=("application_name", "x")) == "allow"


def test_a_limit_that_is_off_is_not_pinned_and_advisory_locks_may_be_allowed() -> None:
    relaxed = replace(READ_LIMITS, statement_timeout=timedelta(0), advisory_locks=True)
    pins = LimitPins.of(relaxed, "demo", "read")
    assert "statement_timeout" not in pins.settings
    assert _decide("set statement_timeout = '5s'", pins) == "allow"
    assert _decide("set lock_timeout = 0", pins) == PINNED
    assert _decide("select pg_advisory_lock(1)", pins) == "allow"


def test_refusals_name_the_limit_and_the_scope() -> None:
    decision = decide_pins(analyze("set local statement_timeout = 0"), "x", PINS)
    assert "statement_timeout" in decision.message
    assert "scope 'read' of target 'demo'" in decision.message
    assert "limits.statement_timeout" in decision.hint
    decision = decide_pins(analyze("select pg_advisory_lock(7)"), "x", PINS)
    assert "limits.advisory_locks: true" in decision.hint


def test_a_long_body_is_read_whole() -> None:
    # The analysis keeps 2000 characters of a statement for messages; the scan reads all.
    sql = "do $$ begin " + "raise notice 'x'; " * 300 + "set statement_timeout = 0; end $$"
    assert _decide(sql) == PINNED


@pytest.mark.parametrize(
    ("params", "refused"),
    [
        ({"user": "x", "application_name": "psql"}, None),
        ({"user": "x", "statement_timeout": "0"}, "statement_timeout"),
        ({"user": "x", "Lock_Timeout": "0"}, "lock_timeout"),
        ({"user": "x", "idle_in_transaction_session_timeout": "0"}, "idle_in_transaction"),
        ({"user": "x", "idle_session_timeout": "0"}, "idle_session_timeout"),
        ({"user": "x", "temp_file_limit": "-1"}, "temp_file_limit"),
    ],
)
def test_startup_parameters(params: dict[str, str], refused: str | None) -> None:
    found = startup_refusal(params, PINS)
    if refused is None:
        assert found is None
    else:
        assert found is not None and refused in found[0] and "scope 'read'" in found[0]


def test_a_refused_startup_parameter_is_recorded_with_its_limit() -> None:
    params = {"user": "x", "Lock_Timeout": "0"}
    refused = startup_refusal(params, PINS)
    assert refused is not None
    hit = startup_limit_hit(params, PINS, refused[0])
    assert (hit.limit, hit.value, hit.scope, hit.action, hit.sqlstate, hit.message) == (
        "lock_timeout",
        "10s",
        "read",
        "refused",
        "42501",
        refused[0],
    )
