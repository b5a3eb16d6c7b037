"""Guardrail decisions: whether the gateway relays a statement, holds it for review, or refuses it.

``decide(analysis, rules)`` is a pure function of an :class:`~server.gateway.sqlcheck.Analysis`
and the :class:`GuardrailRules` of the session's target and scope.  Every statement
of the input is judged, together with the statements it runs inside itself
(a data-modifying CTE, the statement under EXPLAIN ANALYZE, the query of COPY or
CREATE TABLE AS); the strictest outcome wins (BLOCK over REVIEW over ALLOW) and
names the first statement that reached it.

Each statement is checked in a fixed order and the first rule that blocks it is
the answer; if none blocks, the first rule asking for review is.  The order:

===============================  ===============================================
rule                             blocks (unless the rules allow it)
===============================  ===============================================
``guardrails.unknown``           a statement the analysis did not understand
                                 (``unknown: review`` asks for review instead)
``guardrails.unknown_prepared``  EXECUTE of a prepared statement the caller
                                 cannot show (same outcome as ``unknown``)
``guardrails.command_denied``    a command in ``denied_commands`` (two-phase
                                 commit by default)
``guardrails.no_alter_system``   ALTER SYSTEM
``guardrails.no_role_change``    SET/RESET ROLE, SESSION AUTHORIZATION,
                                 ``set_config('role', ...)`` or a setting name
                                 the analysis could not read
``guardrails.no_privilege``      GRANT, REVOKE, roles, policies, default
                                 privileges, REASSIGN/DROP OWNED
``guardrails.pinned_setting``    changing a pinned setting (client_encoding,
                                 standard_conforming_strings, search_path),
                                 RESET ALL, DISCARD ALL, COPY ... ENCODING
``guardrails.no_drop``           DROP of any object
``guardrails.no_truncate``       TRUNCATE
``guardrails.no_copy_program``   COPY TO/FROM PROGRAM
``guardrails.no_copy_file``      COPY TO/FROM a server file
``guardrails.no_code``           DO, CREATE/ALTER FUNCTION/PROCEDURE/LANGUAGE,
                                 extensions, LOAD (``allow_code``)
``guardrails.no_foreign``        foreign servers, user mappings, foreign tables,
                                 subscriptions, dblink*/postgres_fdw* functions
``guardrails.no_file_access``    pg_read_file, pg_ls_dir, lo_import, ...
``guardrails.no_large_objects``  lo_* functions
``guardrails.no_server_admin``   pg_terminate_backend, pg_reload_conf, ...
``guardrails.no_dynamic_sql``    query_to_xml and friends (SQL text the gateway
                                 never sees)
``guardrails.no_listen_notify``  LISTEN, NOTIFY, pg_notify
``guardrails.function_denied``   a function on ``functions_deny``
``guardrails.function_not_allowed`` a function missing from ``functions_allow``
``guardrails.block_<class>``     a statement class in ``block``
``guardrails.where_required``    UPDATE/DELETE/MERGE without a WHERE (or ON)
                                 that restricts rows
``guardrails.review_<class>``    REVIEW: a statement class in ``review``
``guardrails.row_budget``        (not by ``decide``: the caller's EXPLAIN) an
                                 UPDATE/DELETE/MERGE the planner expects to
                                 touch more rows than ``max_rows_by_explain``,
                                 or one it could not estimate
===============================  ===============================================

``search_path`` is pinned because the analysis resolves unqualified names with
the search_path the session started with (the gateway's caller passes it to
``analyze``).  A function allow-list entry without a schema allows an
unqualified call only while ``pg_catalog`` is searched first
(``catalog_first``): a session whose search_path puts another schema before it
may reach a same-named function there.

DO and CALL run code whose effects cannot be seen; they count as both WRITE and
DDL for ``block`` and ``review``.  A PREPARE is held to the blocking rules of the
statement it prepares (nothing runs yet, so review waits for EXECUTE); an EXECUTE
is judged as the statement it runs, which the caller passes in ``prepared`` (a
PREPARE or DEALLOCATE earlier in the same input is taken into account); plain
EXPLAIN runs nothing and is judged by the functions its planning may call.

``normalize_for_approval`` and ``statement_sha256`` give the hash a statement
review binds its approval to.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from server.gateway.sqlcheck import (
    Analysis,
    CopyEndpoint,
    Execution,
    Feature,
    Name,
    Statement,
    StatementClass,
    parse_name,
)

__all__ = [
    "DYNAMIC_SQL_FUNCTIONS",
    "FILE_FUNCTIONS",
    "FOREIGN_FUNCTIONS",
    "LARGE_OBJECT_FUNCTIONS",
    "NOTIFY_FUNCTIONS",
    "SERVER_ADMIN_FUNCTIONS",
    "Decision",
    "GuardrailRules",
    "Outcome",
    "decide",
    "normalize_for_approval",
    "row_budget_decision",
    "row_budget_unknown",
    "statement_sha256",
]


class Outcome(StrEnum):
    ALLOW = "allow"
    REVIEW = "review"
    BLOCK = "block"


_RANK = {Outcome.ALLOW: 0, Outcome.REVIEW: 1, Outcome.BLOCK: 2}


@dataclass(frozen=True)
class Decision:
    """``rule`` is a stable name for logs, audit and approvals; ``message`` and
    ``hint`` are for the person; ``statement_index`` is 0-based in the input;
    ``limit`` names the policy's ``limits`` key behind a refusal by a limit."""

    outcome: Outcome
    rule: str
    message: str
    hint: str
    statement_index: int | None
    # The policy key of the scope limit that refused it (``limits.*`` rules), if any.
    limit: str | None = None


ALLOWED = Decision(Outcome.ALLOW, "guardrails.allow", "", "", None)


def graver(a: Decision, b: Decision) -> Decision:
    """The decision with the graver outcome (``a`` when they are equal)."""
    return b if _RANK[b.outcome] > _RANK[a.outcome] else a


# Functions by what they reach.  A trailing * matches any name with that prefix.
FILE_FUNCTIONS = frozenset(
    {
        "pg_read_file",
        "pg_read_binary_file",
        "pg_stat_file",
        "pg_ls_dir",
        "pg_ls_logdir",
        "pg_ls_waldir",
        "pg_ls_tmpdir",
        "pg_ls_archive_statusdir",
        "pg_ls_logicalsnapdir",
        "pg_ls_logicalmapdir",
        "pg_ls_replslotdir",
        "pg_ls_summariesdir",
        "pg_current_logfile",
        "pg_file_write",
        "pg_file_rename",
        "pg_file_unlink",
        "pg_file_sync",
        "pg_logdir_ls",
        "lo_import",
        "lo_export",
    }
)
LARGE_OBJECT_FUNCTIONS = frozenset({"lo_*", "loread", "lowrite", "pg_largeobject*"})
FOREIGN_FUNCTIONS = frozenset({"dblink*", "postgres_fdw*"})
SERVER_ADMIN_FUNCTIONS = frozenset(
    {
        "pg_terminate_backend",
        "pg_cancel_backend",
        "pg_reload_conf",
        "pg_rotate_logfile",
        "pg_promote",
        "pg_switch_wal",
        "pg_create_restore_point",
        "pg_backup_start",
        "pg_backup_stop",
        "pg_start_backup",
        "pg_stop_backup",
        "pg_log_backend_memory_contexts",
        "pg_create_physical_replication_slot",
        "pg_create_logical_replication_slot",
        "pg_drop_replication_slot",
        "pg_copy_physical_replication_slot",
        "pg_copy_logical_replication_slot",
        "pg_replication_slot_advance",
        "pg_logical_emit_message",
        "pg_replication_origin_*",
        "pg_wal_replay_pause",
        "pg_wal_replay_resume",
        "pg_stat_reset*",
    }
)
DYNAMIC_SQL_FUNCTIONS = frozenset(
    {
        "query_to_xml",
        "query_to_xmlschema",
        "query_to_xml_and_xmlschema",
        "cursor_to_xml",
        "cursor_to_xmlschema",
        "table_to_xml*",
        "schema_to_xml*",
        "database_to_xml*",
        # Full-text search functions that run the query text they are given.
        "ts_stat",
        "ts_rewrite",
    }
)
NOTIFY_FUNCTIONS = frozenset({"pg_notify"})
SEQUENCE_FUNCTIONS = frozenset({"nextval", "setval"})
# Built-in functions whose call changes something a rollback of the client's
# reading does not undo, or that outlives the statement: a sequence, a file, a
# large object, another database, the server or another backend, a notification
# sent at commit, a setting, a session-level advisory lock.  A SELECT calling
# one is not a read (``masking_guard.may_have_changed``), unless it is one of
# READING_FUNCTIONS.
# Functions whose effect outlives the statement and that the session can read
# back: a setting (current_setting), a notification, an advisory lock (pg_locks
# shows its keys, which may be computed from any value the statement read).
# Masked sessions deny them (``wiring.guard_setup``).
SIDE_CHANNELS = frozenset({"set_config", "pg_notify", "pg_advisory_*", "pg_try_advisory_*"})
CHANGING_FUNCTIONS = (
    FILE_FUNCTIONS
    | LARGE_OBJECT_FUNCTIONS
    | FOREIGN_FUNCTIONS
    | SERVER_ADMIN_FUNCTIONS
    | NOTIFY_FUNCTIONS
    | SEQUENCE_FUNCTIONS
    | DYNAMIC_SQL_FUNCTIONS  # they run SQL they are given, which may do anything
    | SIDE_CHANNELS
    | {
        "pg_logical_slot_get_*",  # consume a slot's changes
        "pg_import_system_collations",
        "brin_summarize_*",
        "brin_desummarize_range",
        "gin_clean_pending_list",
    }
)
# Of those, the ones that only read: a large object's bytes or position, a
# server file or directory.
READING_FUNCTIONS = frozenset(
    {
        "lo_open",
        "lo_close",
        "loread",
        "lo_lseek",
        "lo_lseek64",
        "lo_tell",
        "lo_tell64",
        "lo_get",
        "pg_read_file",
        "pg_read_binary_file",
        "pg_stat_file",
        "pg_ls_*",
        "pg_current_logfile",
        "pg_logdir_ls",
    }
)
_ROLE_SETTINGS = frozenset({"role", "session_authorization"})
_ANY_SETTING = "*"
_ALL_SETTINGS = "all"


@dataclass(frozen=True)
class _Pattern:
    schema: str | None
    name: str
    prefix: bool

    @classmethod
    def parse(cls, text: str) -> _Pattern:
        prefix = text.endswith("*")
        body = text[:-1] if prefix else text
        if prefix and body.endswith("."):
            schema = parse_name(body[:-1])  # schema.*: every function of the schema
            if len(schema.parts) != 1:
                raise ValueError(f"not a schema: {text!r}")
            return cls(schema.name, "", True)
        name = parse_name(body)
        if len(name.parts) > 2:
            raise ValueError(f"function names have at most a schema and a name: {text!r}")
        return cls(name.schema, name.name, prefix)

    def names(self, call: Name) -> bool:
        return call.name.startswith(self.name) if self.prefix else call.name == self.name

    def denies(self, call: Name) -> bool:
        # An unqualified call may resolve to the denied schema's function.
        return self.names(call) and (self.schema is None or call.schema in (None, self.schema))

    def allows(self, call: Name, catalog_first: bool) -> bool:
        # An unqualified entry allows the call as written without a schema (and
        # the pg_catalog built-in), not a same-named function in a schema the
        # caller chose -- which an unqualified call reaches when the session's
        # search_path puts that schema before pg_catalog; a qualified entry
        # allows only calls qualified alike, since an unqualified call may
        # resolve elsewhere.
        if not self.names(call):
            return False
        if self.schema is None:
            return call.schema == "pg_catalog" or (call.schema is None and catalog_first)
        return call.schema == self.schema


def _patterns(entries: Iterable[str]) -> tuple[_Pattern, ...]:
    return tuple(_Pattern.parse(entry) for entry in entries)


_CATEGORY_PATTERNS = {
    "file": _patterns(FILE_FUNCTIONS),
    "large_object": _patterns(LARGE_OBJECT_FUNCTIONS),
    "foreign": _patterns(FOREIGN_FUNCTIONS),
    "server_admin": _patterns(SERVER_ADMIN_FUNCTIONS),
    "dynamic_sql": _patterns(DYNAMIC_SQL_FUNCTIONS),
    "notify": _patterns(NOTIFY_FUNCTIONS),
}


@dataclass(frozen=True, kw_only=True)
class GuardrailRules:
    """The guardrails of one target and scope.

    The defaults are the conservative baseline every scope starts from; ``preset``
    gives the usual read/write/admin shapes.  ``functions_allow`` (None: no
    allow-list) and ``functions_deny`` take names as written in SQL, optionally
    schema-qualified, with a trailing ``*`` for a prefix.  ``max_rows_by_explain``
    is for the caller, which runs EXPLAIN and hands the estimate to
    :func:`row_budget_decision`.  ``catalog_first`` is a fact of the session:
    False when its search_path puts a schema before ``pg_catalog``.
    ``elsewhere`` is a fact of the target: (class, scope) for each other scope
    whose guardrails allow a class this one blocks, in policy order, so that a
    refusal can name the scope to use instead.  ``one_statement`` refuses an
    input of several statements (agents' sessions: ``rules.agent_rules``).
    """

    allow_drop: bool = False
    allow_truncate: bool = False
    allow_alter_system: bool = False
    allow_privilege: bool = False
    allow_set_role: bool = False
    pinned_settings: frozenset[str] = frozenset(
        {"client_encoding", "standard_conforming_strings", "search_path"}
    )
    allow_copy_program: bool = False
    allow_copy_file: bool = False
    allow_file_access: bool = False
    allow_large_objects: bool = False
    allow_foreign: bool = False
    allow_server_admin: bool = False
    allow_dynamic_sql: bool = False
    allow_listen_notify: bool = False
    allow_code: bool = False
    require_where: bool = True
    denied_commands: frozenset[str] = frozenset(
        {"PREPARE TRANSACTION", "COMMIT PREPARED", "ROLLBACK PREPARED"}
    )
    block: frozenset[StatementClass] = frozenset()
    review: frozenset[StatementClass] = frozenset()
    functions_allow: frozenset[str] | None = None
    functions_deny: frozenset[str] = frozenset()
    # Functions whose call writes (a sequence's nextval/setval): the statement
    # counts as a WRITE too, for ``block`` and ``review``.
    write_functions: frozenset[str] = frozenset()
    # Commands counted as a WRITE too (maintenance that rewrites or locks tables).
    write_commands: frozenset[str] = frozenset()
    unknown: Outcome = Outcome.BLOCK
    max_rows_by_explain: int | None = None
    one_statement: bool = False
    catalog_first: bool = True
    elsewhere: tuple[tuple[StatementClass, str], ...] = ()
    _allow: tuple[_Pattern, ...] | None = field(init=False, repr=False, compare=False)
    _deny: tuple[_Pattern, ...] = field(init=False, repr=False, compare=False)
    _writes: tuple[_Pattern, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.unknown not in (Outcome.BLOCK, Outcome.REVIEW):
            raise ValueError("unknown must be block or review")
        if StatementClass.UNKNOWN in self.block | self.review:
            raise ValueError("unknown statements are governed by 'unknown', not block/review")
        if self.max_rows_by_explain is not None and self.max_rows_by_explain < 0:
            raise ValueError("max_rows_by_explain must not be negative")
        allow = None if self.functions_allow is None else _patterns(self.functions_allow)
        object.__setattr__(self, "_allow", allow)
        object.__setattr__(self, "_deny", _patterns(self.functions_deny))
        object.__setattr__(self, "_writes", _patterns(self.write_functions))
        object.__setattr__(
            self, "pinned_settings", frozenset(s.lower() for s in self.pinned_settings)
        )
        object.__setattr__(
            self, "denied_commands", frozenset(c.upper() for c in self.denied_commands)
        )
        object.__setattr__(
            self, "write_commands", frozenset(c.upper() for c in self.write_commands)
        )

    @classmethod
    def preset(cls, scope: str, *, production: bool = False) -> GuardrailRules:
        """The usual rules for a ``read``, ``write`` or ``admin`` scope; on a
        production target every write is reviewed too."""
        if scope == "read":
            return cls(block=frozenset({StatementClass.WRITE, StatementClass.DDL}))
        if scope not in ("write", "admin"):
            raise ValueError(f"no preset for scope {scope!r}: use read, write or admin")
        review = {StatementClass.DDL, StatementClass.WRITE} if production else {StatementClass.DDL}
        return cls(review=frozenset(review), allow_code=scope == "admin")


@dataclass(frozen=True)
class _Hit:
    outcome: Outcome
    rule: str
    message: str
    hint: str


_ASK = "ask an administrator, or use a scope whose guardrails allow it"
_PINNED_HINT = (
    "the gateway relies on UTF8 and standard_conforming_strings=on to read "
    "statements, and resolves table names with the session's starting search_path; "
    "leave them as they are"
)
_PINNED_HINTS = {
    "search_path": (
        "set search_path as a startup parameter when connecting (the gateway resolves "
        "table names with the search_path the session started with), or qualify names "
        "with their schema"
    ),
}


def decide(
    analysis: Analysis,
    rules: GuardrailRules,
    *,
    prepared: Mapping[str, Analysis] | None = None,
) -> Decision:
    """The decision for a whole input; ``prepared`` maps the names of the
    session's prepared statements to their analyses, for EXECUTE.  A PREPARE or
    DEALLOCATE earlier in the same input counts for the statements after it."""
    known = dict(prepared or {})
    best: Decision = ALLOWED
    for top in analysis.statements:
        hit = _judge_tree(top, rules, known, depth=0)
        if hit is not None and _RANK[hit.outcome] > _RANK[best.outcome]:
            best = Decision(hit.outcome, hit.rule, hit.message, hit.hint, top.index)
            if hit.outcome is Outcome.BLOCK:
                break
        track_prepared(top, known)
    if rules.one_statement and len(analysis.statements) > 1 and best.outcome is not Outcome.BLOCK:
        return Decision(
            Outcome.BLOCK,
            "guardrails.one_statement",
            f"one statement at a time: this input holds {len(analysis.statements)}",
            "send each statement on its own",
            1,
        )
    return best


def track_prepared(
    statement: Statement, known: dict[str, Analysis], texts: dict[str, str] | None = None
) -> None:
    """Follow what ``statement`` does to the SQL prepared statements in ``known``
    (and to their PREPARE statements' texts in ``texts``)."""
    if statement.command == "PREPARE" and statement.prepared_name and statement.nested:
        body = replace(statement.nested[0], execution=Execution.NOW)
        known[statement.prepared_name] = Analysis((body,))
        if texts is not None:
            texts[statement.prepared_name] = statement.text
    elif statement.command == "DEALLOCATE" and statement.prepared_name:
        known.pop(statement.prepared_name, None)
        if texts is not None:
            texts.pop(statement.prepared_name, None)
    elif statement.command in ("DEALLOCATE ALL", "DISCARD ALL"):
        known.clear()
        if texts is not None:
            texts.clear()


def row_budget_decision(
    estimated_rows: float, rules: GuardrailRules, statement_index: int | None = None
) -> Decision:
    """Turns the caller's EXPLAIN row estimate for a write into a decision."""
    budget = rules.max_rows_by_explain
    if budget is None or estimated_rows <= budget:
        return ALLOWED
    return Decision(
        Outcome.BLOCK,
        "guardrails.row_budget",
        f"the planner expects this statement to touch about {estimated_rows:.0f} rows, "
        f"more than this scope's row budget of {budget}",
        f"the estimate is {estimated_rows:.0f} rows and the budget {budget}: narrow the "
        f"WHERE clause, or change the rows in batches of at most {budget}",
        statement_index,
    )


def row_budget_unknown(
    why: str, rules: GuardrailRules, statement_index: int | None = None
) -> Decision:
    """The decision when the caller could not get an estimate: the budget holds
    only for what was estimated, so the statement is refused."""
    return Decision(
        Outcome.BLOCK,
        "guardrails.row_budget",
        f"the gateway could not estimate how many rows this statement touches: {why}",
        f"this scope allows at most {rules.max_rows_by_explain} rows per statement, checked "
        "with EXPLAIN before it runs; send the UPDATE, DELETE or MERGE as a statement of "
        "its own",
        statement_index,
    )


def _judge_tree(
    top: Statement,
    rules: GuardrailRules,
    prepared: Mapping[str, Analysis],
    depth: int,
) -> _Hit | None:
    review: _Hit | None = None
    for statement, when in top.walk():
        if when is Execution.NEVER:
            continue
        hit = _judge(statement, when, rules, prepared, depth)
        if hit is None:
            continue
        if hit.outcome is Outcome.BLOCK:
            return hit
        if review is None:
            review = hit
    return review


def _judge(
    st: Statement,
    when: Execution,
    rules: GuardrailRules,
    prepared: Mapping[str, Analysis],
    depth: int,
) -> _Hit | None:
    blocked = _blocking(st, rules, prepared, depth)
    if blocked is not None:
        if blocked.outcome is Outcome.BLOCK or when is Execution.NOW:
            return blocked
        return None
    if when is not Execution.NOW:
        return None
    return _reviewing(st, rules)


def _blocking(
    st: Statement,
    rules: GuardrailRules,
    prepared: Mapping[str, Analysis],
    depth: int,
) -> _Hit | None:
    hit = _blocking_rules(st, rules)
    if hit is not None and hit.outcome is Outcome.BLOCK:
        return hit
    # EXECUTE of a statement that needs review still faces every blocking rule.
    pending = None
    if st.command == "EXECUTE" and st.prepared_name is not None:
        pending = _execute(st.prepared_name, rules, prepared, depth)
        if pending is not None and pending.outcome is Outcome.BLOCK:
            return pending
    return hit or pending


def _blocking_rules(st: Statement, rules: GuardrailRules) -> _Hit | None:
    command = st.command or "this statement"
    if st.kind is StatementClass.UNKNOWN:
        return _Hit(
            rules.unknown,
            "guardrails.unknown",
            f"the gateway could not analyse this statement: {st.reason}",
            "rewrite it in plain SQL or split it into simpler statements"
            if rules.unknown is Outcome.BLOCK
            else "it needs a review before it can run",
        )
    if st.command in rules.denied_commands:
        return _Hit(Outcome.BLOCK, "guardrails.command_denied", f"{command} is not allowed", _ASK)
    if st.command == "ALTER SYSTEM" and not rules.allow_alter_system:
        return _Hit(
            Outcome.BLOCK,
            "guardrails.no_alter_system",
            "ALTER SYSTEM changes the server's configuration and is not allowed",
            "server configuration is changed by the database's administrators",
        )
    role_settings = [s for s in st.settings if s in _ROLE_SETTINGS or s == _ANY_SETTING]
    if role_settings and not rules.allow_set_role:
        what = "a setting it cannot name" if role_settings == [_ANY_SETTING] else role_settings[0]
        return _Hit(
            Outcome.BLOCK,
            "guardrails.no_role_change",
            f"{command} changes {what}; changing the session's role is not allowed",
            "the session already runs with its scope's privileges; "
            "ask for a scope that grants what you need",
        )
    if st.kind is StatementClass.PRIVILEGE and not role_settings and not rules.allow_privilege:
        return _Hit(
            Outcome.BLOCK,
            "guardrails.no_privilege",
            f"{command} changes privileges or roles and is not allowed",
            "privileges are managed by the broker's policy; " + _ASK,
        )
    # RESET ALL and DISCARD ALL return pinned settings to the database's
    # defaults, which need not be the values the gateway pinned.
    pinned = [
        s for s in st.settings if s in rules.pinned_settings or s in (_ANY_SETTING, _ALL_SETTINGS)
    ]
    if pinned and rules.pinned_settings:
        what = {
            _ANY_SETTING: "a setting it cannot name",
            _ALL_SETTINGS: "every setting, pinned ones included,",
        }.get(pinned[0], pinned[0])
        return _Hit(
            Outcome.BLOCK,
            "guardrails.pinned_setting",
            f"{command} changes {what}, which the gateway keeps fixed",
            _PINNED_HINTS.get(pinned[0], _PINNED_HINT),
        )
    if st.command.startswith("DROP ") and not rules.allow_drop:
        return _Hit(
            Outcome.BLOCK,
            "guardrails.no_drop",
            f"{command} is not allowed through the gateway",
            _ASK,
        )
    if st.command == "TRUNCATE" and not rules.allow_truncate:
        return _Hit(
            Outcome.BLOCK,
            "guardrails.no_truncate",
            "TRUNCATE is not allowed through the gateway",
            "delete the rows you mean with DELETE ... WHERE, or " + _ASK,
        )
    if (
        st.copy is not None
        and st.copy.endpoint is CopyEndpoint.PROGRAM
        and not rules.allow_copy_program
    ):
        return _Hit(
            Outcome.BLOCK,
            "guardrails.no_copy_program",
            f"COPY {st.copy.direction.upper()} PROGRAM runs a command on the database server",
            "use COPY ... FROM STDIN / TO STDOUT (psql's \\copy) instead",
        )
    if st.copy is not None and st.copy.endpoint is CopyEndpoint.FILE and not rules.allow_copy_file:
        return _Hit(
            Outcome.BLOCK,
            "guardrails.no_copy_file",
            f"COPY {st.copy.direction.upper()} a file reads or writes files on the database server",
            "use COPY ... FROM STDIN / TO STDOUT (psql's \\copy) instead",
        )
    if Feature.CODE in st.features and not rules.allow_code:
        return _Hit(
            Outcome.BLOCK,
            "guardrails.no_code",
            f"{command} runs or installs server-side code, which this scope does not allow",
            "use plain SQL statements, or ask for a scope that allows code",
        )
    foreign_calls = _matching(st.functions, _CATEGORY_PATTERNS["foreign"])
    if (Feature.FOREIGN in st.features or foreign_calls) and not rules.allow_foreign:
        what = f"{foreign_calls[0]}()" if foreign_calls else command
        return _Hit(
            Outcome.BLOCK,
            "guardrails.no_foreign",
            f"{what} reaches other servers, which is not allowed",
            "connect to the other database through dbaccess directly",
        )
    for category, rule, allowed, text in (
        (
            "file",
            "guardrails.no_file_access",
            rules.allow_file_access,
            "reads or writes server files",
        ),
        (
            "large_object",
            "guardrails.no_large_objects",
            rules.allow_large_objects,
            "uses large objects",
        ),
        (
            "server_admin",
            "guardrails.no_server_admin",
            rules.allow_server_admin,
            "administers the server",
        ),
        (
            "dynamic_sql",
            "guardrails.no_dynamic_sql",
            rules.allow_dynamic_sql,
            "runs SQL text the gateway cannot check",
        ),
    ):
        calls = _matching(st.functions, _CATEGORY_PATTERNS[category])
        if calls and not allowed:
            return _Hit(Outcome.BLOCK, rule, f"{calls[0]}() {text}, which is not allowed", _ASK)
    notify_calls = _matching(st.functions, _CATEGORY_PATTERNS["notify"])
    if (
        Feature.LISTEN in st.features or Feature.NOTIFY in st.features or notify_calls
    ) and not rules.allow_listen_notify:
        what = f"{notify_calls[0]}()" if notify_calls else command
        return _Hit(
            Outcome.BLOCK,
            "guardrails.no_listen_notify",
            f"{what} uses notifications, which this scope does not allow",
            _ASK,
        )
    denied = _matching(st.functions, rules._deny)
    if denied:
        return _Hit(
            Outcome.BLOCK,
            "guardrails.function_denied",
            f"{denied[0]}() is not allowed on this target",
            _ASK,
        )
    if rules._allow is not None:
        first = rules.catalog_first
        missing = [f for f in st.functions if not any(p.allows(f, first) for p in rules._allow)]
        if missing:
            return _Hit(
                Outcome.BLOCK,
                "guardrails.function_not_allowed",
                f"{missing[0]}() is not on this target's list of allowed functions",
                _ASK,
            )
    for kind in _classes(st, rules):
        if kind in rules.block:
            return _Hit(
                Outcome.BLOCK,
                f"guardrails.block_{kind.value}",
                f"{command} {_what(st, kind, rules)}, which this scope does not allow",
                _scope_hint(rules, kind),
            )
    if st.restricting_where is False and rules.require_where:
        clause = "an ON condition" if st.command == "MERGE" else "a WHERE clause"
        return _Hit(
            Outcome.BLOCK,
            "guardrails.where_required",
            f"{command} without {clause} that restricts rows would change every row",
            "add a WHERE clause naming the rows to change (a condition that is always "
            "true does not count)",
        )
    return None


def _reviewing(st: Statement, rules: GuardrailRules) -> _Hit | None:
    for kind in _classes(st, rules):
        if kind in rules.review:
            return _Hit(
                Outcome.REVIEW,
                f"guardrails.review_{kind.value}",
                f"{st.command or 'this statement'} {_what(st, kind, rules)}, "
                "which needs a review on this target",
                "request a review of this statement; it runs once approved",
            )
    return None


_CLASS_TEXT = {
    StatementClass.READ: "read",
    StatementClass.WRITE: "write",
    StatementClass.DDL: "schema change",
    StatementClass.PRIVILEGE: "privilege change",
    StatementClass.SESSION_STATE: "session setting change",
    StatementClass.TRANSACTION: "transaction control statement",
    StatementClass.UTILITY: "utility statement",
    StatementClass.UNKNOWN: "statement the gateway does not understand",
}


_CLASS_PLURAL = {
    StatementClass.READ: "reads",
    StatementClass.WRITE: "writes",
    StatementClass.DDL: "schema changes",
    StatementClass.PRIVILEGE: "privilege changes",
    StatementClass.SESSION_STATE: "session setting changes",
    StatementClass.TRANSACTION: "transaction control",
    StatementClass.UTILITY: "utility statements",
}


def _scope_hint(rules: GuardrailRules, kind: StatementClass) -> str:
    """Where a statement of ``kind`` this scope blocks may run instead."""
    what = _CLASS_PLURAL.get(kind, "it")
    for allowed, scope in rules.elsewhere:
        if allowed is kind:
            return f"run it in a scope that allows {what}: --scope {scope}"
    return f"no other scope of this target allows {what}; {_ASK}"


def _classes(st: Statement, rules: GuardrailRules) -> tuple[StatementClass, ...]:
    if Feature.OPAQUE in st.features:
        # Code whose effects are invisible may write or change the schema.
        return (st.kind, StatementClass.WRITE, StatementClass.DDL)
    if st.kind is not StatementClass.WRITE and (
        st.command in rules.write_commands or _matching(st.functions, rules._writes)
    ):
        return (st.kind, StatementClass.WRITE)
    return (st.kind,)


def _what(st: Statement, kind: StatementClass, rules: GuardrailRules) -> str:
    if kind is not st.kind:
        writes = _matching(st.functions, rules._writes)
        if writes and Feature.OPAQUE not in st.features:
            return f"calls {writes[0]}(), which writes"
        if st.command in rules.write_commands:
            return "rewrites, locks or changes what the planner knows of tables"
        return "runs code that may change data or the schema"
    return f"is a {_CLASS_TEXT[kind]}"


def _matching(functions: Sequence[Name], patterns: Sequence[_Pattern]) -> list[Name]:
    return [f for f in functions if any(p.denies(f) for p in patterns)]


_MAX_PREPARED_DEPTH = 4


def _execute(
    name: str,
    rules: GuardrailRules,
    prepared: Mapping[str, Analysis],
    depth: int,
) -> _Hit | None:
    body = prepared.get(name)
    if body is None or depth >= _MAX_PREPARED_DEPTH:
        return _Hit(
            rules.unknown,
            "guardrails.unknown_prepared",
            f"EXECUTE {name}: the gateway does not know what {name} prepared",
            "prepare it in this session through the gateway, then execute it",
        )
    worst: _Hit | None = None
    for statement in body.statements:
        hit = _judge_tree(statement, rules, prepared, depth + 1)
        if hit is not None and (worst is None or _RANK[hit.outcome] > _RANK[worst.outcome]):
            worst = _Hit(hit.outcome, hit.rule, f"EXECUTE {name}: {hit.message}", hit.hint)
    return worst


# ---------------------------------------------------------------------------
# Approvals


# PostgreSQL's whitespace (before 16, which added the vertical tab): trimming
# anything else could make a statement that fails equal to one that runs.
_PG_SPACE = " \t\n\r\f"


def normalize_for_approval(sql: str) -> str:
    """The text an approval is bound to: surrounding whitespace (as PostgreSQL
    counts it, so a no-break space stays) and one trailing semicolon removed,
    nothing else, so two different statements never normalize alike."""
    text = sql.strip(_PG_SPACE)
    if text.endswith(";"):
        text = text[:-1].rstrip(_PG_SPACE)
    return text


def statement_sha256(
    sql: str,
    params: Sequence[bytes | str | None] = (),
    formats: Sequence[int] = (),
) -> str:
    """SHA-256 (hex) of the normalized statement and its bound parameters.

    ``params`` are the Bind values (str is taken as UTF-8 text, None is NULL) and
    ``formats`` their format codes as Bind gives them: none means all text, one
    applies to all, otherwise one per parameter.  Every part is length-prefixed,
    so no two different (statement, parameters) pairs share an encoding.
    """
    if len(formats) > 1 and len(formats) != len(params):
        raise ValueError("need no format code, one, or one per parameter")
    codes = [
        formats[0] if len(formats) == 1 else formats[i] if formats else 0
        for i in range(len(params))
    ]
    digest = hashlib.sha256(b"dbaccess statement v1\x00")
    text = normalize_for_approval(sql).encode("utf-8")
    digest.update(len(text).to_bytes(8, "big"))
    digest.update(text)
    digest.update(len(params).to_bytes(4, "big"))
    for value, code in zip(params, codes, strict=True):
        if code not in (0, 1):
            raise ValueError(f"unknown parameter format code {code}")
        if isinstance(value, str) and code != 0:
            raise ValueError("a str parameter must use the text format")
        digest.update(code.to_bytes(2, "big"))
        if value is None:
            digest.update((-1).to_bytes(4, "big", signed=True))
            continue
        raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        digest.update(len(raw).to_bytes(4, "big", signed=True))
        digest.update(raw)
    return digest.hexdigest()
