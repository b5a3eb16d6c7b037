"""Guardrail decision tables: statement -> outcome and rule, per scope preset and variation.

Each row of ``DECISIONS`` gives the decision under the default rules and under
the read, write, production-write and admin presets, written ``outcome:rule``
(without the ``guardrails.`` prefix), ``@i`` naming the offending statement when
it is not the first, or ``allow``.
"""

from __future__ import annotations

import string
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.gateway.guardrails import (
    DYNAMIC_SQL_FUNCTIONS,
    FILE_FUNCTIONS,
    FOREIGN_FUNCTIONS,
    LARGE_OBJECT_FUNCTIONS,
    SERVER_ADMIN_FUNCTIONS,
    Decision,
    GuardrailRules,
    Outcome,
    decide,
    normalize_for_approval,
    row_budget_decision,
    row_budget_unknown,
    statement_sha256,
)
from server.gateway.sqlcheck import Analysis, StatementClass, analyze, analyze_function_call

PRESETS = {
    "default": GuardrailRules(),
    "read": GuardrailRules.preset("read"),
    "write": GuardrailRules.preset("write"),
    "prod": GuardrailRules.preset("write", production=True),
    "admin": GuardrailRules.preset("admin"),
}


def short(decision: Decision) -> str:
    if decision.outcome is Outcome.ALLOW:
        return "allow"
    text = f"{decision.outcome.value}:{decision.rule.removeprefix('guardrails.')}"
    return text + (f"@{decision.statement_index}" if decision.statement_index else "")


def judge(sql: str, rules: GuardrailRules, **kwargs: object) -> str:
    return short(decide(analyze(sql), rules, **kwargs))  # type: ignore[arg-type]


# (statement, default, read, write, prod, admin)
DECISIONS = [
    ("SELECT 1", "allow", "allow", "allow", "allow", "allow"),
    ("SELECT * FROM customers WHERE id = 1", "allow", "allow", "allow", "allow", "allow"),
    (
        "SELECT * FROM t FOR UPDATE",
        "allow",
        "block:block_write",
        "allow",
        "review:review_write",
        "allow",
    ),
    (
        "SELECT * FROM t FOR SHARE",
        "allow",
        "block:block_write",
        "allow",
        "review:review_write",
        "allow",
    ),
    ("WITH x AS (SELECT 1) SELECT * FROM x", "allow", "allow", "allow", "allow", "allow"),
    ("VALUES (1)", "allow", "allow", "allow", "allow", "allow"),
    ("TABLE t", "allow", "allow", "allow", "allow", "allow"),
    ("SHOW search_path", "allow", "allow", "allow", "allow", "allow"),
    (
        "INSERT INTO t VALUES (1)",
        "allow",
        "block:block_write",
        "allow",
        "review:review_write",
        "allow",
    ),
    (
        "INSERT INTO t SELECT * FROM u",
        "allow",
        "block:block_write",
        "allow",
        "review:review_write",
        "allow",
    ),
    (
        "UPDATE t SET a = 1 WHERE id = 1",
        "allow",
        "block:block_write",
        "allow",
        "review:review_write",
        "allow",
    ),
    (
        "UPDATE t SET a = 1",
        "block:where_required",
        "block:block_write",
        "block:where_required",
        "block:where_required",
        "block:where_required",
    ),
    (
        "UPDATE t SET a = 1 WHERE true",
        "block:where_required",
        "block:block_write",
        "block:where_required",
        "block:where_required",
        "block:where_required",
    ),
    (
        "UPDATE t SET a = 1 WHERE 1 = 1",
        "block:where_required",
        "block:block_write",
        "block:where_required",
        "block:where_required",
        "block:where_required",
    ),
    (
        "UPDATE t SET a = 1 WHERE id = id",
        "block:where_required",
        "block:block_write",
        "block:where_required",
        "block:where_required",
        "block:where_required",
    ),
    (
        "UPDATE t SET a = 1 WHERE id IS NOT NULL OR true",
        "block:where_required",
        "block:block_write",
        "block:where_required",
        "block:where_required",
        "block:where_required",
    ),
    (
        "UPDATE t SET a = 1 WHERE NOT false",
        "block:where_required",
        "block:block_write",
        "block:where_required",
        "block:where_required",
        "block:where_required",
    ),
    (
        "DELETE FROM t WHERE id = 1",
        "allow",
        "block:block_write",
        "allow",
        "review:review_write",
        "allow",
    ),
    (
        "DELETE FROM t",
        "block:where_required",
        "block:block_write",
        "block:where_required",
        "block:where_required",
        "block:where_required",
    ),
    (
        "DELETE FROM t WHERE 'a' = 'a'",
        "block:where_required",
        "block:block_write",
        "block:where_required",
        "block:where_required",
        "block:where_required",
    ),
    (
        "DELETE FROM t WHERE x IS NULL OR x IS NOT NULL",
        "block:where_required",
        "block:block_write",
        "block:where_required",
        "block:where_required",
        "block:where_required",
    ),
    (
        "DELETE FROM t WHERE false",
        "allow",
        "block:block_write",
        "allow",
        "review:review_write",
        "allow",
    ),
    (
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
        "allow",
        "block:block_write",
        "allow",
        "review:review_write",
        "allow",
    ),
    (
        "MERGE INTO t USING s ON true WHEN MATCHED THEN UPDATE SET a = 1",
        "block:where_required",
        "block:block_write",
        "block:where_required",
        "block:where_required",
        "block:where_required",
    ),
    (
        "MERGE INTO t USING s ON true WHEN NOT MATCHED THEN INSERT VALUES (1)",
        "allow",
        "block:block_write",
        "allow",
        "review:review_write",
        "allow",
    ),
    (
        "WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x",
        "block:where_required",
        "block:block_write",
        "block:where_required",
        "block:where_required",
        "block:where_required",
    ),
    (
        "WITH x AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM x",
        "allow",
        "block:block_write",
        "allow",
        "review:review_write",
        "allow",
    ),
    ("EXPLAIN DELETE FROM t", "allow", "allow", "allow", "allow", "allow"),
    (
        "EXPLAIN ANALYZE DELETE FROM t",
        "block:where_required",
        "block:block_write",
        "block:where_required",
        "block:where_required",
        "block:where_required",
    ),
    (
        "EXPLAIN ANALYZE DELETE FROM t WHERE id = 1",
        "allow",
        "block:block_write",
        "allow",
        "review:review_write",
        "allow",
    ),
    ("EXPLAIN ANALYZE SELECT * FROM t", "allow", "allow", "allow", "allow", "allow"),
    (
        "EXPLAIN SELECT pg_read_file('/etc/passwd')",
        "block:no_file_access",
        "block:no_file_access",
        "block:no_file_access",
        "block:no_file_access",
        "block:no_file_access",
    ),
    ("PREPARE p AS SELECT * FROM t WHERE id = $1", "allow", "allow", "allow", "allow", "allow"),
    (
        "PREPARE p AS DELETE FROM t",
        "block:where_required",
        "block:block_write",
        "block:where_required",
        "block:where_required",
        "block:where_required",
    ),
    (
        "PREPARE p AS DELETE FROM t WHERE id = $1",
        "allow",
        "block:block_write",
        "allow",
        "allow",
        "allow",
    ),
    (
        "PREPARE p AS SELECT pg_read_file($1)",
        "block:no_file_access",
        "block:no_file_access",
        "block:no_file_access",
        "block:no_file_access",
        "block:no_file_access",
    ),
    (
        "EXECUTE p(1)",
        "block:unknown_prepared",
        "block:unknown_prepared",
        "block:unknown_prepared",
        "block:unknown_prepared",
        "block:unknown_prepared",
    ),
    ("DEALLOCATE p", "allow", "allow", "allow", "allow", "allow"),
    (
        "CREATE TABLE t (a int)",
        "allow",
        "block:block_ddl",
        "review:review_ddl",
        "review:review_ddl",
        "review:review_ddl",
    ),
    (
        "CREATE TABLE t AS SELECT * FROM u",
        "allow",
        "block:block_ddl",
        "review:review_ddl",
        "review:review_ddl",
        "review:review_ddl",
    ),
    (
        "SELECT * INTO x FROM t",
        "allow",
        "block:block_ddl",
        "review:review_ddl",
        "review:review_ddl",
        "review:review_ddl",
    ),
    (
        "CREATE INDEX ON t (a)",
        "allow",
        "block:block_ddl",
        "review:review_ddl",
        "review:review_ddl",
        "review:review_ddl",
    ),
    (
        "CREATE VIEW v AS SELECT 1",
        "allow",
        "block:block_ddl",
        "review:review_ddl",
        "review:review_ddl",
        "review:review_ddl",
    ),
    (
        "ALTER TABLE t ADD COLUMN b int",
        "allow",
        "block:block_ddl",
        "review:review_ddl",
        "review:review_ddl",
        "review:review_ddl",
    ),
    (
        "ALTER TABLE t OWNER TO bob",
        "allow",
        "block:block_ddl",
        "review:review_ddl",
        "review:review_ddl",
        "review:review_ddl",
    ),
    (
        "COMMENT ON TABLE t IS 'x'",
        "allow",
        "block:block_ddl",
        "review:review_ddl",
        "review:review_ddl",
        "review:review_ddl",
    ),
    (
        "CREATE TABLE t (a text DEFAULT pg_read_file('/etc/passwd'))",
        "block:no_file_access",
        "block:no_file_access",
        "block:no_file_access",
        "block:no_file_access",
        "block:no_file_access",
    ),
    (
        "DROP TABLE t",
        "block:no_drop",
        "block:no_drop",
        "block:no_drop",
        "block:no_drop",
        "block:no_drop",
    ),
    (
        "DROP INDEX i",
        "block:no_drop",
        "block:no_drop",
        "block:no_drop",
        "block:no_drop",
        "block:no_drop",
    ),
    (
        "DROP VIEW IF EXISTS v",
        "block:no_drop",
        "block:no_drop",
        "block:no_drop",
        "block:no_drop",
        "block:no_drop",
    ),
    (
        "DROP FUNCTION f()",
        "block:no_drop",
        "block:no_drop",
        "block:no_drop",
        "block:no_drop",
        "block:no_drop",
    ),
    (
        "DROP SCHEMA s CASCADE",
        "block:no_drop",
        "block:no_drop",
        "block:no_drop",
        "block:no_drop",
        "block:no_drop",
    ),
    (
        "TRUNCATE t",
        "block:no_truncate",
        "block:no_truncate",
        "block:no_truncate",
        "block:no_truncate",
        "block:no_truncate",
    ),
    (
        "ALTER SYSTEM SET work_mem = '1GB'",
        "block:no_alter_system",
        "block:no_alter_system",
        "block:no_alter_system",
        "block:no_alter_system",
        "block:no_alter_system",
    ),
    (
        "GRANT SELECT ON t TO bob",
        "block:no_privilege",
        "block:no_privilege",
        "block:no_privilege",
        "block:no_privilege",
        "block:no_privilege",
    ),
    (
        "REVOKE ALL ON t FROM bob",
        "block:no_privilege",
        "block:no_privilege",
        "block:no_privilege",
        "block:no_privilege",
        "block:no_privilege",
    ),
    (
        "CREATE ROLE bob SUPERUSER",
        "block:no_privilege",
        "block:no_privilege",
        "block:no_privilege",
        "block:no_privilege",
        "block:no_privilege",
    ),
    (
        "ALTER ROLE bob PASSWORD 'x'",
        "block:no_privilege",
        "block:no_privilege",
        "block:no_privilege",
        "block:no_privilege",
        "block:no_privilege",
    ),
    (
        "DROP ROLE bob",
        "block:no_privilege",
        "block:no_privilege",
        "block:no_privilege",
        "block:no_privilege",
        "block:no_privilege",
    ),
    (
        "CREATE USER bob",
        "block:no_privilege",
        "block:no_privilege",
        "block:no_privilege",
        "block:no_privilege",
        "block:no_privilege",
    ),
    (
        "DROP OWNED BY bob",
        "block:no_privilege",
        "block:no_privilege",
        "block:no_privilege",
        "block:no_privilege",
        "block:no_privilege",
    ),
    (
        "REASSIGN OWNED BY a TO b",
        "block:no_privilege",
        "block:no_privilege",
        "block:no_privilege",
        "block:no_privilege",
        "block:no_privilege",
    ),
    (
        "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO bob",
        "block:no_privilege",
        "block:no_privilege",
        "block:no_privilege",
        "block:no_privilege",
        "block:no_privilege",
    ),
    (
        "CREATE POLICY p ON t USING (true)",
        "block:no_privilege",
        "block:no_privilege",
        "block:no_privilege",
        "block:no_privilege",
        "block:no_privilege",
    ),
    (
        "SET ROLE postgres",
        "block:no_role_change",
        "block:no_role_change",
        "block:no_role_change",
        "block:no_role_change",
        "block:no_role_change",
    ),
    (
        "SET LOCAL ROLE postgres",
        "block:no_role_change",
        "block:no_role_change",
        "block:no_role_change",
        "block:no_role_change",
        "block:no_role_change",
    ),
    (
        "RESET ROLE",
        "block:no_role_change",
        "block:no_role_change",
        "block:no_role_change",
        "block:no_role_change",
        "block:no_role_change",
    ),
    (
        "SET SESSION AUTHORIZATION postgres",
        "block:no_role_change",
        "block:no_role_change",
        "block:no_role_change",
        "block:no_role_change",
        "block:no_role_change",
    ),
    (
        "SELECT set_config('role', 'postgres', false)",
        "block:no_role_change",
        "block:no_role_change",
        "block:no_role_change",
        "block:no_role_change",
        "block:no_role_change",
    ),
    (
        "SELECT pg_catalog.set_config('session_authorization', 'x', false)",
        "block:no_role_change",
        "block:no_role_change",
        "block:no_role_change",
        "block:no_role_change",
        "block:no_role_change",
    ),
    (
        "SELECT set_config($1, 'x', false)",
        "block:no_role_change",
        "block:no_role_change",
        "block:no_role_change",
        "block:no_role_change",
        "block:no_role_change",
    ),
    (
        "UPDATE pg_settings SET setting = 'x' WHERE name = 'role'",
        "block:no_role_change",
        "block:no_role_change",
        "block:no_role_change",
        "block:no_role_change",
        "block:no_role_change",
    ),
    (
        "SET client_encoding = 'SJIS'",
        "block:pinned_setting",
        "block:pinned_setting",
        "block:pinned_setting",
        "block:pinned_setting",
        "block:pinned_setting",
    ),
    (
        "SET NAMES 'LATIN1'",
        "block:pinned_setting",
        "block:pinned_setting",
        "block:pinned_setting",
        "block:pinned_setting",
        "block:pinned_setting",
    ),
    (
        "RESET client_encoding",
        "block:pinned_setting",
        "block:pinned_setting",
        "block:pinned_setting",
        "block:pinned_setting",
        "block:pinned_setting",
    ),
    (
        "SET standard_conforming_strings = off",
        "block:pinned_setting",
        "block:pinned_setting",
        "block:pinned_setting",
        "block:pinned_setting",
        "block:pinned_setting",
    ),
    (
        "SELECT set_config('standard_conforming_strings', 'off', false)",
        "block:pinned_setting",
        "block:pinned_setting",
        "block:pinned_setting",
        "block:pinned_setting",
        "block:pinned_setting",
    ),
    ("SET work_mem = '64MB'", "allow", "allow", "allow", "allow", "allow"),
    (
        "SET search_path = app, public",
        "block:pinned_setting",
        "block:pinned_setting",
        "block:pinned_setting",
        "block:pinned_setting",
        "block:pinned_setting",
    ),
    ("SELECT set_config('work_mem', '1GB', false)", "allow", "allow", "allow", "allow", "allow"),
    (
        "RESET ALL",
        "block:pinned_setting",
        "block:pinned_setting",
        "block:pinned_setting",
        "block:pinned_setting",
        "block:pinned_setting",
    ),
    ("DISCARD PLANS", "allow", "allow", "allow", "allow", "allow"),
    (
        "DISCARD ALL",
        "block:pinned_setting",
        "block:pinned_setting",
        "block:pinned_setting",
        "block:pinned_setting",
        "block:pinned_setting",
    ),
    ("BEGIN", "allow", "allow", "allow", "allow", "allow"),
    ("BEGIN READ WRITE", "allow", "allow", "allow", "allow", "allow"),
    ("COMMIT", "allow", "allow", "allow", "allow", "allow"),
    ("ROLLBACK", "allow", "allow", "allow", "allow", "allow"),
    ("SAVEPOINT s", "allow", "allow", "allow", "allow", "allow"),
    (
        "PREPARE TRANSACTION 'x'",
        "block:command_denied",
        "block:command_denied",
        "block:command_denied",
        "block:command_denied",
        "block:command_denied",
    ),
    (
        "COMMIT PREPARED 'x'",
        "block:command_denied",
        "block:command_denied",
        "block:command_denied",
        "block:command_denied",
        "block:command_denied",
    ),
    ("COPY t FROM STDIN", "allow", "block:block_write", "allow", "review:review_write", "allow"),
    ("COPY t TO STDOUT", "allow", "allow", "allow", "allow", "allow"),
    ("COPY (SELECT * FROM t) TO STDOUT", "allow", "allow", "allow", "allow", "allow"),
    (
        "COPY t FROM PROGRAM 'id'",
        "block:no_copy_program",
        "block:no_copy_program",
        "block:no_copy_program",
        "block:no_copy_program",
        "block:no_copy_program",
    ),
    (
        "COPY t TO PROGRAM 'id'",
        "block:no_copy_program",
        "block:no_copy_program",
        "block:no_copy_program",
        "block:no_copy_program",
        "block:no_copy_program",
    ),
    (
        "COPY t FROM '/etc/passwd'",
        "block:no_copy_file",
        "block:no_copy_file",
        "block:no_copy_file",
        "block:no_copy_file",
        "block:no_copy_file",
    ),
    (
        "COPY t TO '/tmp/out'",
        "block:no_copy_file",
        "block:no_copy_file",
        "block:no_copy_file",
        "block:no_copy_file",
        "block:no_copy_file",
    ),
    (
        "COPY t FROM STDIN WITH (ENCODING 'LATIN1')",
        "block:pinned_setting",
        "block:pinned_setting",
        "block:pinned_setting",
        "block:pinned_setting",
        "block:pinned_setting",
    ),
    (
        "COPY (DELETE FROM t RETURNING *) TO STDOUT",
        "block:where_required",
        "block:block_write",
        "block:where_required",
        "block:where_required",
        "block:where_required",
    ),
    (
        "SELECT pg_read_file('/etc/passwd')",
        "block:no_file_access",
        "block:no_file_access",
        "block:no_file_access",
        "block:no_file_access",
        "block:no_file_access",
    ),
    (
        "SELECT pg_catalog.pg_read_binary_file('/x')",
        "block:no_file_access",
        "block:no_file_access",
        "block:no_file_access",
        "block:no_file_access",
        "block:no_file_access",
    ),
    (
        "SELECT * FROM pg_ls_dir('.')",
        "block:no_file_access",
        "block:no_file_access",
        "block:no_file_access",
        "block:no_file_access",
        "block:no_file_access",
    ),
    (
        "SELECT lo_import('/etc/passwd')",
        "block:no_file_access",
        "block:no_file_access",
        "block:no_file_access",
        "block:no_file_access",
        "block:no_file_access",
    ),
    (
        "SELECT lo_create(0)",
        "block:no_large_objects",
        "block:no_large_objects",
        "block:no_large_objects",
        "block:no_large_objects",
        "block:no_large_objects",
    ),
    (
        "SELECT loread(0, 10)",
        "block:no_large_objects",
        "block:no_large_objects",
        "block:no_large_objects",
        "block:no_large_objects",
        "block:no_large_objects",
    ),
    (
        "SELECT dblink_connect('host=x')",
        "block:no_foreign",
        "block:no_foreign",
        "block:no_foreign",
        "block:no_foreign",
        "block:no_foreign",
    ),
    (
        "SELECT * FROM dblink('host=x', 'select 1') AS t(a int)",
        "block:no_foreign",
        "block:no_foreign",
        "block:no_foreign",
        "block:no_foreign",
        "block:no_foreign",
    ),
    (
        "SELECT postgres_fdw_get_connections()",
        "block:no_foreign",
        "block:no_foreign",
        "block:no_foreign",
        "block:no_foreign",
        "block:no_foreign",
    ),
    (
        "SELECT pg_terminate_backend(123)",
        "block:no_server_admin",
        "block:no_server_admin",
        "block:no_server_admin",
        "block:no_server_admin",
        "block:no_server_admin",
    ),
    (
        "SELECT pg_catalog.pg_cancel_backend(123)",
        "block:no_server_admin",
        "block:no_server_admin",
        "block:no_server_admin",
        "block:no_server_admin",
        "block:no_server_admin",
    ),
    (
        "SELECT pg_reload_conf()",
        "block:no_server_admin",
        "block:no_server_admin",
        "block:no_server_admin",
        "block:no_server_admin",
        "block:no_server_admin",
    ),
    (
        "SELECT query_to_xml('select 1', true, false, '')",
        "block:no_dynamic_sql",
        "block:no_dynamic_sql",
        "block:no_dynamic_sql",
        "block:no_dynamic_sql",
        "block:no_dynamic_sql",
    ),
    (
        "LISTEN ch",
        "block:no_listen_notify",
        "block:no_listen_notify",
        "block:no_listen_notify",
        "block:no_listen_notify",
        "block:no_listen_notify",
    ),
    ("UNLISTEN *", "allow", "allow", "allow", "allow", "allow"),
    (
        "NOTIFY ch, 'x'",
        "block:no_listen_notify",
        "block:no_listen_notify",
        "block:no_listen_notify",
        "block:no_listen_notify",
        "block:no_listen_notify",
    ),
    (
        "SELECT pg_notify('ch', 'x')",
        "block:no_listen_notify",
        "block:no_listen_notify",
        "block:no_listen_notify",
        "block:no_listen_notify",
        "block:no_listen_notify",
    ),
    (
        "DO $$ BEGIN END $$",
        "block:no_code",
        "block:no_code",
        "block:no_code",
        "block:no_code",
        "review:review_ddl",
    ),
    (
        "CALL p()",
        "allow",
        "block:block_write",
        "review:review_ddl",
        "review:review_write",
        "review:review_ddl",
    ),
    (
        "CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql",
        "block:no_code",
        "block:no_code",
        "block:no_code",
        "block:no_code",
        "review:review_ddl",
    ),
    (
        "CREATE OR REPLACE PROCEDURE p() LANGUAGE sql AS 'select 1'",
        "block:no_code",
        "block:no_code",
        "block:no_code",
        "block:no_code",
        "review:review_ddl",
    ),
    (
        "ALTER FUNCTION f() SECURITY DEFINER",
        "block:no_code",
        "block:no_code",
        "block:no_code",
        "block:no_code",
        "review:review_ddl",
    ),
    (
        "CREATE EXTENSION pgcrypto",
        "block:no_code",
        "block:no_code",
        "block:no_code",
        "block:no_code",
        "review:review_ddl",
    ),
    (
        "CREATE EXTENSION dblink",
        "block:no_code",
        "block:no_code",
        "block:no_code",
        "block:no_code",
        "block:no_foreign",
    ),
    (
        "LOAD 'auto_explain'",
        "block:no_code",
        "block:no_code",
        "block:no_code",
        "block:no_code",
        "allow",
    ),
    (
        "CREATE SERVER s FOREIGN DATA WRAPPER postgres_fdw",
        "block:no_foreign",
        "block:no_foreign",
        "block:no_foreign",
        "block:no_foreign",
        "block:no_foreign",
    ),
    (
        "CREATE USER MAPPING FOR bob SERVER s",
        "block:no_foreign",
        "block:no_foreign",
        "block:no_foreign",
        "block:no_foreign",
        "block:no_foreign",
    ),
    (
        "CREATE FOREIGN TABLE ft (a int) SERVER s",
        "block:no_foreign",
        "block:no_foreign",
        "block:no_foreign",
        "block:no_foreign",
        "block:no_foreign",
    ),
    (
        "IMPORT FOREIGN SCHEMA s FROM SERVER x INTO y",
        "block:no_foreign",
        "block:no_foreign",
        "block:no_foreign",
        "block:no_foreign",
        "block:no_foreign",
    ),
    ("VACUUM t", "allow", "allow", "allow", "allow", "allow"),
    ("ANALYZE t", "allow", "allow", "allow", "allow", "allow"),
    ("CHECKPOINT", "allow", "allow", "allow", "allow", "allow"),
    (
        "REFRESH MATERIALIZED VIEW mv",
        "allow",
        "block:block_write",
        "allow",
        "review:review_write",
        "allow",
    ),
    ("LOCK TABLE t", "allow", "block:block_write", "allow", "review:review_write", "allow"),
    ("LOCK TABLE t IN ACCESS SHARE MODE", "allow", "allow", "allow", "allow", "allow"),
    ("DECLARE c CURSOR FOR SELECT * FROM t", "allow", "allow", "allow", "allow", "allow"),
    ("FETCH 10 FROM c", "allow", "allow", "allow", "allow", "allow"),
    ("SELECT 'DROP TABLE x'", "allow", "allow", "allow", "allow", "allow"),
    (
        "SELEC 1",
        "block:unknown",
        "block:unknown",
        "block:unknown",
        "block:unknown",
        "block:unknown",
    ),
    (
        "SELECT 1; DROP TABLE x",
        "block:no_drop@1",
        "block:no_drop@1",
        "block:no_drop@1",
        "block:no_drop@1",
        "block:no_drop@1",
    ),
    (
        "SELECT 1; UPDATE t SET a = 1 WHERE id = 1; DELETE FROM t",
        "block:where_required@2",
        "block:block_write@1",
        "block:where_required@2",
        "block:where_required@2",
        "block:where_required@2",
    ),
    (
        "BEGIN; UPDATE t SET a = 1 WHERE id = 1; COMMIT",
        "allow",
        "block:block_write@1",
        "allow",
        "review:review_write@1",
        "allow",
    ),
    (
        "CREATE TABLE a (x int); INSERT INTO a VALUES (1)",
        "allow",
        "block:block_ddl",
        "review:review_ddl",
        "review:review_ddl",
        "review:review_ddl",
    ),
    (
        "SELECT 1; SELEC 2",
        "block:unknown@1",
        "block:unknown@1",
        "block:unknown@1",
        "block:unknown@1",
        "block:unknown@1",
    ),
    (
        "INSERT INTO t VALUES (1); CREATE INDEX ON t (a)",
        "allow",
        "block:block_write",
        "review:review_ddl@1",
        "review:review_write",
        "review:review_ddl@1",
    ),
]


@pytest.mark.parametrize(("sql", "default", "read", "write", "prod", "admin"), DECISIONS)
def test_presets(sql: str, default: str, read: str, write: str, prod: str, admin: str) -> None:
    expected = {"default": default, "read": read, "write": write, "prod": prod, "admin": admin}
    got = {name: judge(sql, rules) for name, rules in PRESETS.items()}
    assert got == expected


@pytest.mark.parametrize(("sql", "default", "read", "write", "prod", "admin"), DECISIONS)
def test_every_refusal_explains_itself(
    sql: str, default: str, read: str, write: str, prod: str, admin: str
) -> None:
    analysis = analyze(sql)
    for rules in PRESETS.values():
        decision = decide(analysis, rules)
        if decision.outcome is Outcome.ALLOW:
            assert decision == Decision(Outcome.ALLOW, "guardrails.allow", "", "", None)
            continue
        assert decision.rule.startswith("guardrails.")
        assert decision.message and decision.hint
        assert decision.statement_index is not None
        assert 0 <= decision.statement_index < len(analysis.statements)


# (statement, rules, expected)
VARIATIONS = [
    # DROP and TRUNCATE
    ("DROP TABLE t", GuardrailRules(allow_drop=True), "allow"),
    (
        "DROP TABLE t",
        GuardrailRules(allow_drop=True, block=frozenset({StatementClass.DDL})),
        ("block:block_ddl"),
    ),
    (
        "DROP TABLE t",
        GuardrailRules(allow_drop=True, review=frozenset({StatementClass.DDL})),
        ("review:review_ddl"),
    ),
    ("DROP ROLE bob", GuardrailRules(allow_drop=True), "block:no_privilege"),
    ("DROP OWNED BY bob", GuardrailRules(allow_drop=True), "block:no_privilege"),
    ("TRUNCATE t", GuardrailRules(allow_truncate=True), "allow"),
    (
        "TRUNCATE t",
        GuardrailRules(allow_truncate=True, review=frozenset({StatementClass.WRITE})),
        ("review:review_write"),
    ),
    ("ALTER SYSTEM SET work_mem = '1GB'", GuardrailRules(allow_alter_system=True), "allow"),
    # privileges and roles
    ("GRANT SELECT ON t TO bob", GuardrailRules(allow_privilege=True), "allow"),
    ("CREATE ROLE bob", GuardrailRules(allow_privilege=True), "allow"),
    ("SET ROLE owner", GuardrailRules(allow_privilege=True), "block:no_role_change"),
    ("SET ROLE owner", GuardrailRules(allow_set_role=True), "allow"),
    ("RESET ROLE", GuardrailRules(allow_set_role=True), "allow"),
    ("SET SESSION AUTHORIZATION bob", GuardrailRules(allow_set_role=True), "allow"),
    ("SELECT set_config('role', 'owner', false)", GuardrailRules(allow_set_role=True), "allow"),
    ("GRANT SELECT ON t TO bob", GuardrailRules(allow_set_role=True), "block:no_privilege"),
    # a setting the analysis cannot name may be a pinned one
    (
        "SELECT set_config($1, 'x', false)",
        GuardrailRules(allow_set_role=True),
        ("block:pinned_setting"),
    ),
    (
        "SELECT set_config($1, 'x', false)",
        GuardrailRules(allow_set_role=True, pinned_settings=frozenset()),
        "allow",
    ),
    # pinned settings
    ("SET client_encoding = 'SJIS'", GuardrailRules(pinned_settings=frozenset()), "allow"),
    ("RESET ALL", GuardrailRules(pinned_settings=frozenset()), "allow"),
    ("DISCARD ALL", GuardrailRules(pinned_settings=frozenset()), "allow"),
    (
        "SET search_path = evil",
        GuardrailRules(pinned_settings=frozenset({"Search_Path"})),
        ("block:pinned_setting"),
    ),
    (
        "SET SCHEMA 'evil'",
        GuardrailRules(pinned_settings=frozenset({"search_path"})),
        ("block:pinned_setting"),
    ),
    (
        "SET client_encoding = 'SJIS'",
        GuardrailRules(pinned_settings=frozenset({"search_path"})),
        ("allow"),
    ),
    # COPY
    ("COPY t FROM PROGRAM 'id'", GuardrailRules(allow_copy_program=True), "allow"),
    ("COPY t FROM PROGRAM 'id'", GuardrailRules(allow_copy_file=True), "block:no_copy_program"),
    ("COPY t TO '/tmp/x'", GuardrailRules(allow_copy_file=True), "allow"),
    ("COPY t TO '/tmp/x'", GuardrailRules(allow_copy_program=True), "block:no_copy_file"),
    # function families
    ("SELECT pg_read_file('x')", GuardrailRules(allow_file_access=True), "allow"),
    ("SELECT lo_import('/x')", GuardrailRules(allow_file_access=True), "block:no_large_objects"),
    ("SELECT lo_import('/x')", GuardrailRules(allow_large_objects=True), "block:no_file_access"),
    (
        "SELECT lo_import('/x')",
        GuardrailRules(allow_file_access=True, allow_large_objects=True),
        "allow",
    ),
    ("SELECT lo_create(0)", GuardrailRules(allow_large_objects=True), "allow"),
    ("SELECT dblink_exec('x', 'y')", GuardrailRules(allow_foreign=True), "allow"),
    (
        "CREATE SERVER s FOREIGN DATA WRAPPER postgres_fdw",
        GuardrailRules(allow_foreign=True),
        ("allow"),
    ),
    ("CREATE EXTENSION dblink", GuardrailRules(allow_foreign=True), "block:no_code"),
    ("CREATE EXTENSION dblink", GuardrailRules(allow_foreign=True, allow_code=True), "allow"),
    ("SELECT pg_terminate_backend(1)", GuardrailRules(allow_server_admin=True), "allow"),
    ("SELECT query_to_xml('x', true, true, '')", GuardrailRules(allow_dynamic_sql=True), "allow"),
    ("LISTEN ch", GuardrailRules(allow_listen_notify=True), "allow"),
    ("NOTIFY ch", GuardrailRules(allow_listen_notify=True), "allow"),
    ("SELECT pg_notify('a', 'b')", GuardrailRules(allow_listen_notify=True), "allow"),
    # code
    ("DO $$ BEGIN END $$", GuardrailRules(allow_code=True), "allow"),
    (
        "DO $$ BEGIN END $$",
        GuardrailRules(allow_code=True, block=frozenset({StatementClass.WRITE})),
        ("block:block_write"),
    ),
    ("CALL p()", GuardrailRules(block=frozenset({StatementClass.DDL})), "block:block_ddl"),
    (
        "CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql",
        GuardrailRules(allow_code=True),
        ("allow"),
    ),
    ("LOAD 'x'", GuardrailRules(allow_code=True), "allow"),
    # WHERE
    ("DELETE FROM t", GuardrailRules(require_where=False), "allow"),
    ("UPDATE t SET a = 1 WHERE true", GuardrailRules(require_where=False), "allow"),
    (
        "MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE",
        GuardrailRules(require_where=False),
        ("allow"),
    ),
    # commands and classes
    ("VACUUM t", GuardrailRules(denied_commands=frozenset({"VACUUM"})), "block:command_denied"),
    ("LOCK t", GuardrailRules(denied_commands=frozenset({"lock table"})), "block:command_denied"),
    ("PREPARE TRANSACTION 'x'", GuardrailRules(denied_commands=frozenset()), "allow"),
    (
        "SET work_mem = '1GB'",
        GuardrailRules(block=frozenset({StatementClass.SESSION_STATE})),
        ("block:block_session_state"),
    ),
    (
        "VACUUM t",
        GuardrailRules(review=frozenset({StatementClass.UTILITY})),
        ("review:review_utility"),
    ),
    (
        "BEGIN",
        GuardrailRules(block=frozenset({StatementClass.TRANSACTION})),
        ("block:block_transaction"),
    ),
    ("SELECT 1", GuardrailRules(review=frozenset({StatementClass.READ})), "review:review_read"),
    (
        "SELECT * FROM t FOR UPDATE",
        GuardrailRules(review=frozenset({StatementClass.WRITE})),
        ("review:review_write"),
    ),
    # unknown
    ("SELEC 1", GuardrailRules(unknown=Outcome.REVIEW), "review:unknown"),
    ("EXECUTE p", GuardrailRules(unknown=Outcome.REVIEW), "review:unknown_prepared"),
    ("SELEC 1; DROP TABLE t", GuardrailRules(unknown=Outcome.REVIEW), "block:no_drop@1"),
    ("PREPARE p AS SELEC 1", GuardrailRules(unknown=Outcome.REVIEW), "review:unknown"),
]


@pytest.mark.parametrize(("sql", "rules", "expected"), VARIATIONS)
def test_variations(sql: str, rules: GuardrailRules, expected: str) -> None:
    assert judge(sql, rules) == expected


FUNCTION_RULES = GuardrailRules(
    functions_deny=frozenset({"public.dangerous", "md5", "crypt*", '"Evil"'}),
)
ALLOW_LIST = GuardrailRules(
    functions_allow=frozenset({"lower", "count", "now", "app.*", "reports.monthly"})
)
SHADOWED_ALLOW_LIST = replace(ALLOW_LIST, catalog_first=False)


@pytest.mark.parametrize(
    ("sql", "rules", "expected"),
    [
        ("SELECT md5('x')", FUNCTION_RULES, "block:function_denied"),
        ("SELECT pg_catalog.md5('x')", FUNCTION_RULES, "block:function_denied"),
        ("SELECT MD5('x')", FUNCTION_RULES, "block:function_denied"),
        ("SELECT \"md5\"('x')", FUNCTION_RULES, "block:function_denied"),
        ("SELECT crypt('a', 'b')", FUNCTION_RULES, "block:function_denied"),
        ("SELECT crypto_thing()", FUNCTION_RULES, "block:function_denied"),
        ("SELECT dangerous()", FUNCTION_RULES, "block:function_denied"),
        ("SELECT public.dangerous()", FUNCTION_RULES, "block:function_denied"),
        ("SELECT other.dangerous()", FUNCTION_RULES, "allow"),
        ('SELECT "Evil"()', FUNCTION_RULES, "block:function_denied"),
        ("SELECT evil()", FUNCTION_RULES, "allow"),
        ("SELECT lower(md5('x'))", FUNCTION_RULES, "block:function_denied"),
        ("DELETE FROM t WHERE md5(a) = 'x'", FUNCTION_RULES, "block:function_denied"),
        ("CREATE TABLE t (a text DEFAULT md5('x'))", FUNCTION_RULES, "block:function_denied"),
        ("SELECT lower(a), count(*), now() FROM t", ALLOW_LIST, "allow"),
        ("SELECT pg_catalog.lower(a) FROM t", ALLOW_LIST, "allow"),
        ("SELECT upper(a) FROM t", ALLOW_LIST, "block:function_not_allowed"),
        ("SELECT evil.lower(a) FROM t", ALLOW_LIST, "block:function_not_allowed"),
        ("SELECT app.anything(1)", ALLOW_LIST, "allow"),
        ("SELECT anything(1)", ALLOW_LIST, "block:function_not_allowed"),
        ("SELECT reports.monthly()", ALLOW_LIST, "allow"),
        ("SELECT monthly()", ALLOW_LIST, "block:function_not_allowed"),
        ("SELECT * FROM t", ALLOW_LIST, "allow"),
        ("SELECT pg_read_file('x')", ALLOW_LIST, "block:no_file_access"),
        (
            "SELECT count(*) FROM t WHERE lower(a) = upper(b)",
            ALLOW_LIST,
            ("block:function_not_allowed"),
        ),
        ("SELECT 1", GuardrailRules(functions_allow=frozenset()), "allow"),
        ("SELECT now()", GuardrailRules(functions_allow=frozenset()), "block:function_not_allowed"),
        # A search_path with a schema before pg_catalog: lower() may be that schema's.
        ("SELECT lower(a) FROM t", SHADOWED_ALLOW_LIST, "block:function_not_allowed"),
        ("SELECT count(*) FROM t", SHADOWED_ALLOW_LIST, "block:function_not_allowed"),
        ("SELECT pg_catalog.lower(a) FROM t", SHADOWED_ALLOW_LIST, "allow"),
        ("SELECT app.anything(1)", SHADOWED_ALLOW_LIST, "allow"),
        ("SELECT 1", SHADOWED_ALLOW_LIST, "allow"),
        ("SELECT md5('x')", replace(FUNCTION_RULES, catalog_first=False), "block:function_denied"),
        ("SELECT evil()", replace(FUNCTION_RULES, catalog_first=False), "allow"),
    ],
)
def test_function_lists(sql: str, rules: GuardrailRules, expected: str) -> None:
    assert judge(sql, rules) == expected


def test_function_list_messages_name_the_function() -> None:
    decision = decide(analyze("SELECT lower(a), upper(b) FROM t"), ALLOW_LIST)
    assert "upper()" in decision.message
    decision = decide(analyze("SELECT pg_catalog.md5('x')"), FUNCTION_RULES)
    assert "pg_catalog.md5()" in decision.message


@pytest.mark.parametrize(
    ("patterns", "sample"),
    [
        (FILE_FUNCTIONS, "pg_read_file"),
        (LARGE_OBJECT_FUNCTIONS, "lo_unlink"),
        (FOREIGN_FUNCTIONS, "dblink_send_query"),
        (SERVER_ADMIN_FUNCTIONS, "pg_stat_reset_shared"),
        (DYNAMIC_SQL_FUNCTIONS, "table_to_xmlschema"),
    ],
)
def test_function_families_are_blocked_by_default(patterns: frozenset[str], sample: str) -> None:
    assert patterns
    decision = decide(analyze(f"SELECT {sample}(1)"), GuardrailRules())
    assert decision.outcome is Outcome.BLOCK
    assert sample in decision.message


@pytest.mark.parametrize(
    "oid", [952, 953, 954, 955, 956, 957, 958, 964, 715, 764, 765, 767, 1004, 3170, 3171, 3172]
)
def test_function_call_messages(oid: int) -> None:
    decision = decide(analyze_function_call(oid), GuardrailRules())
    assert decision.outcome is Outcome.BLOCK
    assert decision.rule in ("guardrails.no_large_objects", "guardrails.no_file_access")
    allowed = GuardrailRules(allow_large_objects=True, allow_file_access=True)
    assert decide(analyze_function_call(oid), allowed).outcome is Outcome.ALLOW


def test_function_call_by_unknown_oid() -> None:
    assert short(decide(analyze_function_call(12345), GuardrailRules())) == "block:unknown"


# --- prepared statements -------------------------------------------------------------


def prepared(**bodies: str) -> dict[str, Analysis]:
    return {name: analyze(sql) for name, sql in bodies.items()}


@pytest.mark.parametrize(
    ("sql", "bodies", "preset", "expected"),
    [
        ("EXECUTE p(1)", {"p": "DELETE FROM t WHERE id = $1"}, "default", "allow"),
        ("EXECUTE p(1)", {"p": "DELETE FROM t WHERE id = $1"}, "prod", "review:review_write"),
        ("EXECUTE p(1)", {"p": "DELETE FROM t WHERE id = $1"}, "read", "block:block_write"),
        ("EXECUTE p", {"p": "DELETE FROM t"}, "default", "block:where_required"),
        ("EXECUTE p", {"p": "SELECT 1; DROP TABLE t"}, "admin", "block:no_drop"),
        ("EXECUTE p", {"q": "SELECT 1"}, "default", "block:unknown_prepared"),
        ('EXECUTE "P"', {"p": "SELECT 1"}, "default", "block:unknown_prepared"),
        ('EXECUTE "P"', {"P": "SELECT 1"}, "default", "allow"),
        ("EXECUTE P", {"p": "SELECT 1"}, "default", "allow"),
        ("EXECUTE p(pg_read_file('x'))", {"p": "SELECT $1"}, "default", "block:no_file_access"),
        # a reviewable body does not hide a blocked argument
        (
            "EXECUTE p(pg_read_file('x'))",
            {"p": "UPDATE t SET a = $1 WHERE id = 1"},
            "prod",
            "block:no_file_access",
        ),
        ("EXPLAIN ANALYZE EXECUTE p", {"p": "DELETE FROM t"}, "default", "block:where_required"),
        ("EXPLAIN EXECUTE p", {}, "default", "allow"),
        ("EXPLAIN ANALYZE EXECUTE p", {}, "default", "block:unknown_prepared"),
        (
            "CREATE TABLE x AS EXECUTE p",
            {"p": "SELECT pg_read_file('x')"},
            "admin",
            ("block:no_file_access"),
        ),
        ("CREATE TABLE x AS EXECUTE p", {"p": "SELECT 1"}, "write", "review:review_ddl"),
        ("SELECT 1; EXECUTE p", {"p": "TRUNCATE t"}, "default", "block:no_truncate@1"),
        ("PREPARE p AS SELECT 1; EXECUTE p", {}, "default", "allow"),
        ("PREPARE p AS SELECT 1; EXECUTE q", {}, "default", "block:unknown_prepared@1"),
        (
            "PREPARE p AS DELETE FROM t WHERE id = $1; EXECUTE p(1)",
            {},
            "prod",
            ("review:review_write@1"),
        ),
        (
            "PREPARE p AS DELETE FROM t WHERE id = $1; EXECUTE p(1)",
            {},
            "read",
            ("block:block_write"),
        ),
        ("DEALLOCATE p; EXECUTE p", {"p": "SELECT 1"}, "default", "block:unknown_prepared@1"),
        ("DEALLOCATE ALL; EXECUTE p", {"p": "SELECT 1"}, "default", "block:unknown_prepared@1"),
        ("EXECUTE p; DEALLOCATE p", {"p": "SELECT 1"}, "default", "allow"),
        (
            "PREPARE p AS SELECT 1; PREPARE p AS SELECT pg_read_file('x'); EXECUTE p",
            {},
            "admin",
            ("block:no_file_access@1"),
        ),
        ("DEALLOCATE p", {}, "default", "allow"),
    ],
)
def test_execute(sql: str, bodies: dict[str, str], preset: str, expected: str) -> None:
    assert judge(sql, PRESETS[preset], prepared=prepared(**bodies)) == expected


def test_execute_message_names_the_prepared_statement() -> None:
    decision = decide(
        analyze("EXECUTE purge"), GuardrailRules(), prepared=prepared(purge="DELETE FROM t")
    )
    assert decision.message.startswith("EXECUTE purge: ")


def test_caller_map_is_not_changed() -> None:
    known = prepared(p="SELECT 1")
    decide(analyze("DEALLOCATE p; PREPARE q AS SELECT 2"), GuardrailRules(), prepared=known)
    assert set(known) == {"p"}


def test_execute_cycles_end() -> None:
    loop = {"p": analyze("EXECUTE p")}
    assert judge("EXECUTE p", GuardrailRules(), prepared=loop) == "block:unknown_prepared"


# --- several statements -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "preset", "expected"),
    [
        ("SELECT 1; SELECT 2; DROP TABLE t", "default", "block:no_drop@2"),
        ("DROP TABLE a; TRUNCATE b", "default", "block:no_drop"),
        ("TRUNCATE b; DROP TABLE a", "default", "block:no_truncate"),
        ("INSERT INTO t VALUES (1); DELETE FROM t", "prod", "block:where_required@1"),
        (
            "SELECT 1; INSERT INTO t VALUES (1); UPDATE t SET a = 1 WHERE id = 1",
            "prod",
            ("review:review_write@1"),
        ),
        ("SELECT 1; CREATE TABLE x (a int); DROP TABLE y", "write", "block:no_drop@2"),
        ("SELECT 1; CREATE TABLE x (a int); SELECT 2", "write", "review:review_ddl@1"),
        ("SELECT 1;;; SELECT 2;", "read", "allow"),
        ("", "default", "allow"),
        ("-- nothing", "default", "allow"),
        ("SELECT 'x'; SET ROLE postgres; SELECT 1", "admin", "block:no_role_change@1"),
        ("BEGIN; SET LOCAL client_encoding = 'SJIS'; COMMIT", "default", "block:pinned_setting@1"),
    ],
)
def test_strictest_outcome_names_the_first_offender(sql: str, preset: str, expected: str) -> None:
    assert judge(sql, PRESETS[preset]) == expected


def test_messages_name_the_command() -> None:
    decision = decide(analyze("SELECT 1; DROP TABLE t"), GuardrailRules())
    assert "DROP TABLE" in decision.message
    decision = decide(analyze("UPDATE t SET a = 1 WHERE 1 = 1"), GuardrailRules())
    assert "UPDATE" in decision.message and "WHERE" in decision.hint
    decision = decide(
        analyze("MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE"), GuardrailRules()
    )
    assert "ON condition" in decision.message
    decision = decide(analyze("SELEC 1"), GuardrailRules())
    assert "unrecognised statement SELEC" in decision.message
    decision = decide(analyze("CALL p()"), GuardrailRules.preset("read"))
    assert "may change data or the schema" in decision.message


_READ_ELSEWHERE = replace(
    GuardrailRules.preset("read"),
    elsewhere=((StatementClass.WRITE, "write"), (StatementClass.DDL, "admin")),
)


@pytest.mark.parametrize(
    ("sql", "rules", "hint"),
    [
        (
            "INSERT INTO t VALUES (1)",
            _READ_ELSEWHERE,
            "run it in a scope that allows writes: --scope write",
        ),
        (
            "CREATE TABLE t (a int)",
            _READ_ELSEWHERE,
            "run it in a scope that allows schema changes: --scope admin",
        ),
        (
            "DELETE FROM t WHERE id = 1",
            GuardrailRules.preset("read"),
            "no other scope of this target allows writes; ask an administrator",
        ),
    ],
)
def test_a_blocked_class_names_the_scope_that_allows_it(
    sql: str, rules: GuardrailRules, hint: str
) -> None:
    decision = decide(analyze(sql), rules)
    assert decision.outcome is Outcome.BLOCK and decision.rule.startswith("guardrails.block_")
    assert decision.hint.startswith(hint), decision.hint


# --- rules -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: GuardrailRules(unknown=Outcome.ALLOW),
        lambda: GuardrailRules(block=frozenset({StatementClass.UNKNOWN})),
        lambda: GuardrailRules(review=frozenset({StatementClass.UNKNOWN})),
        lambda: GuardrailRules(max_rows_by_explain=-1),
        lambda: GuardrailRules(functions_deny=frozenset({"a b"})),
        lambda: GuardrailRules(functions_allow=frozenset({"a.b.c"})),
        lambda: GuardrailRules(functions_allow=frozenset({'"unterminated'})),
        lambda: GuardrailRules.preset("superuser"),
    ],
)
def test_invalid_rules(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


def test_rules_are_frozen_and_comparable() -> None:
    rules = GuardrailRules(functions_deny=frozenset({"md5"}))
    assert rules == GuardrailRules(functions_deny=frozenset({"md5"}))
    assert hash(rules) == hash(GuardrailRules(functions_deny=frozenset({"md5"})))
    with pytest.raises(AttributeError):
        rules.allow_drop = True  # type: ignore[misc]


def test_preset_shapes() -> None:
    assert GuardrailRules.preset("read").block == frozenset(
        {StatementClass.WRITE, StatementClass.DDL}
    )
    assert GuardrailRules.preset("write").review == frozenset({StatementClass.DDL})
    assert GuardrailRules.preset("write", production=True).review == frozenset(
        {StatementClass.DDL, StatementClass.WRITE}
    )
    assert GuardrailRules.preset("admin").allow_code
    assert not GuardrailRules.preset("write").allow_code
    assert GuardrailRules().unknown is Outcome.BLOCK


# --- search_path ----------------------------------------------------------------------

# Every way of changing the search_path once the session runs: the analysis
# resolves table names with the one it started with.
SEARCH_PATH_CHANGES = [
    ("SET search_path = secret, public", None),
    ("set search_path to secret", None),
    ("SET LOCAL search_path TO secret", None),
    ("SET SESSION search_path = DEFAULT", None),
    ("RESET search_path", None),
    ("SET SCHEMA 'secret'", None),
    ("SELECT set_config('search_path', 'secret, public', false)", None),
    ("SELECT set_config('search_path', 'secret', true)", None),
    ("SELECT pg_catalog.set_config('SEARCH_PATH', 'secret', false)", None),
    ("SELECT set_config($1, $2, false)", ("search_path", "secret")),
    ("BEGIN; SET LOCAL search_path = secret; DELETE FROM people WHERE id = 1; COMMIT", None),
    ("PREPARE p AS SELECT set_config('search_path', 'secret', false)", None),
    ("WITH s AS (SELECT set_config('search_path', 'secret', false)) SELECT * FROM s", None),
]


@pytest.mark.parametrize(("sql", "params"), SEARCH_PATH_CHANGES)
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_search_path_changes_are_refused(
    sql: str, params: tuple[str, ...] | None, preset: str
) -> None:
    decision = decide(analyze(sql, params=params), PRESETS[preset])
    assert short(decision).split("@")[0] == "block:pinned_setting"
    assert "search_path" in decision.message
    assert "set search_path as a startup parameter" in decision.hint


@pytest.mark.parametrize(
    "sql",
    ["SHOW search_path", "SELECT current_setting('search_path')", "SELECT current_schemas(true)"],
)
def test_reading_the_search_path_is_allowed(sql: str) -> None:
    assert judge(sql, PRESETS["read"]) == "allow"


# --- row budget --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("budget", "rows", "expected"),
    [
        (None, 10**9, "allow"),
        (1000, 0, "allow"),
        (1000, 1000, "allow"),
        (1000, 1000.4, "block:row_budget"),
        (1000, 5000, "block:row_budget"),
        (0, 1, "block:row_budget"),
    ],
)
def test_row_budget(budget: int | None, rows: float, expected: str) -> None:
    decision = row_budget_decision(rows, GuardrailRules(max_rows_by_explain=budget))
    assert short(decision) == expected
    if decision.outcome is Outcome.BLOCK:
        assert str(budget) in decision.message
        # The hint names the estimate and the budget.
        assert f"estimate is {rows:.0f} rows and the budget {budget}" in decision.hint


def test_row_budget_without_an_estimate_blocks() -> None:
    decision = row_budget_unknown("EXPLAIN failed", GuardrailRules(max_rows_by_explain=7))
    assert short(decision) == "block:row_budget"
    assert "EXPLAIN failed" in decision.message and "at most 7 rows" in decision.hint


def test_row_budget_names_the_statement() -> None:
    decision = row_budget_decision(10, GuardrailRules(max_rows_by_explain=5), statement_index=3)
    assert decision.statement_index == 3


# --- approvals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "normalized"),
    [
        ("SELECT 1", "SELECT 1"),
        ("  SELECT 1;  ", "SELECT 1"),
        ("SELECT 1 ;\n", "SELECT 1"),
        ("\tSELECT 1\r\n", "SELECT 1"),
        ("\x0cSELECT 1\x0c", "SELECT 1"),
        ("\x0bSELECT 1\x0b", "\x0bSELECT 1\x0b"),
        ("SELECT 1;;", "SELECT 1;"),
        ("SELECT 1; ;", "SELECT 1;"),
        ("select  1", "select  1"),
        ("SELECT 'a;'", "SELECT 'a;'"),
        ("SELECT 1 -- c;", "SELECT 1 -- c"),
        ("SELECT 1 AS a\u00a0", "SELECT 1 AS a\u00a0"),
        ("\u00a0SELECT 1", "\u00a0SELECT 1"),
        ("SELECT 1\u2028", "SELECT 1\u2028"),
        ("", ""),
        (";", ""),
        (" ; ", ""),
    ],
)
def test_normalize_for_approval(sql: str, normalized: str) -> None:
    assert normalize_for_approval(sql) == normalized


PG_SPACE = " \t\n\r\x0c"


@given(st.text(alphabet=st.sampled_from(PG_SPACE + "\x0b;'\u00a0ab" + string.digits), max_size=30))
def test_normalization_only_trims(sql: str) -> None:
    normalized = normalize_for_approval(sql)
    lead = len(sql) - len(sql.lstrip(PG_SPACE))
    assert sql[lead:].startswith(normalized)
    rest = sql[lead + len(normalized) :]
    assert rest.strip(PG_SPACE) in ("", ";")
    assert rest.count(";") <= 1
    assert normalize_for_approval(normalized) == normalized or normalized.endswith(";")


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("SELECT 1",), ("SELECT 1;",)),
        (("SELECT 1",), ("  SELECT 1 ;\n",)),
        (("SELECT $1", [b"1"]), ("SELECT $1", ["1"])),
        (("SELECT $1", [b"1"], [0]), ("SELECT $1", [b"1"])),
        (("SELECT $1, $2", [b"1", b"2"], [1]), ("SELECT $1, $2", [b"1", b"2"], [1, 1])),
    ],
)
def test_hash_equal(a: tuple[object, ...], b: tuple[object, ...]) -> None:
    assert statement_sha256(*a) == statement_sha256(*b)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("SELECT 1",), ("SELECT 2",)),
        (("SELECT 1",), ("select 1",)),
        (("SELECT  1",), ("SELECT 1",)),
        (("SELECT 1 AS a\u00a0",), ("SELECT 1 AS a",)),
        (("SELECT 1;;",), ("SELECT 1",)),
        (("SELECT $1", [b"1"]), ("SELECT $1", [b"2"])),
        (("SELECT $1", [None]), ("SELECT $1", [b""])),
        (("SELECT $1", [None]), ("SELECT $1", ["None"])),
        (("SELECT $1", [b"1"]), ("SELECT $1", [b"1"], [1])),
        (("SELECT $1", []), ("SELECT $1", [b""])),
        (("SELECT $1, $2", [b"ab", b"c"]), ("SELECT $1, $2", [b"a", b"bc"])),
        (("SELECT $1", [b"x"]), ("SELECT $1x",)),
        (("SELECT", [b"1"]), ("SELECT\x00\x00\x00\x00\x00\x00\x00\x07SELECT",)),
    ],
)
def test_hash_differs(a: tuple[object, ...], b: tuple[object, ...]) -> None:
    assert statement_sha256(*a) != statement_sha256(*b)  # type: ignore[arg-type]


def test_hash_shape() -> None:
    digest = statement_sha256("SELECT 1")
    assert len(digest) == 64
    assert set(digest) <= set("0123456789abcdef")


@pytest.mark.parametrize(
    ("params", "formats"),
    [
        ([b"1", b"2"], [0, 1, 0]),
        ([b"1"], [2]),
        (["x"], [1]),
        ([b"1", b"2", b"3"], [0, 1]),
    ],
)
def test_hash_rejects_bad_formats(params: list[bytes | str], formats: list[int]) -> None:
    with pytest.raises(ValueError):
        statement_sha256("SELECT $1", params, formats)


# --- obfuscation ---------------------------------------------------------------------------

OBFUSCATED = [
    ("sElEcT pg_READ_file('/etc/passwd')", "block:no_file_access"),
    ("SELECT/**/pg_read_file/**/('/etc/passwd')", "block:no_file_access"),
    ('SELECT "pg_catalog"."pg_read_file"(\'/etc/passwd\')', "block:no_file_access"),
    ("SELECT pg_catalog . pg_read_file ( '/x' )", "block:no_file_access"),
    ("SELECT \"PG_READ_FILE\"('/etc/passwd')", "allow"),  # another (missing) function
    ("SELECT (SELECT (SELECT pg_read_file('/x')))", "block:no_file_access"),
    ("SELECT * FROM t ORDER BY pg_read_file('/x')", "block:no_file_access"),
    ("CREATE TABLE t (a text DEFAULT pg_read_file('/x'))", "block:no_file_access"),
    (
        "ALTER TABLE t ALTER COLUMN a TYPE int USING length(pg_read_file('/x'))",
        ("block:no_file_access"),
    ),
    ("UPDATE t SET a = 1 WHERE pg_read_file('/x') IS NOT NULL", "block:no_file_access"),
    ("COPY t FROM STDIN WHERE pg_read_file('/x') IS NOT NULL", "block:no_file_access"),
    ("EXECUTE p(pg_read_file('/x'))", "block:no_file_access"),
    ("CALL p(pg_read_file('/x'))", "block:no_file_access"),
    ("SELECT pg_catalog.set_config('role', 'postgres', false)", "block:no_role_change"),
    ("SELECT set_config('ROLE', 'postgres', true)", "block:no_role_change"),
    ("SELECT set_config(E'rol\\x65', 'x', false)", "block:no_role_change"),
    ("SELECT set_config('ro' || 'le', 'x', false)", "block:no_role_change"),
    ("SELECT * FROM set_config('role', 'x', false)", "block:no_role_change"),
    (
        "UPDATE pg_catalog.pg_settings SET setting = 'x' WHERE name = 'role'",
        ("block:no_role_change"),
    ),
    ('SET "ROLE" TO postgres', "block:no_role_change"),
    ("SET LOCAL ROLE postgres", "block:no_role_change"),
    ("set session authorization default", "block:no_role_change"),
    ("SET \"Client_Encoding\" = 'SJIS'", "block:pinned_setting"),
    ("SET LOCAL NAMES 'SJIS'", "block:pinned_setting"),
    ("SELECT pg_catalog.pg_terminate_backend(1)", "block:no_server_admin"),
    ("SELECT 1; SELECT 2; /* ; */ DROP TABLE t", "block:no_drop@2"),
    ("SELECT 'a\\'; DROP TABLE t; --'", "block:no_drop@1"),
    ("SELECT E'a\\'; DROP TABLE t; --'", "allow"),
    ("SELECT $x$; DROP TABLE t; $x$", "allow"),
    ("SELECT 1 -- ; DROP TABLE t", "allow"),
    ("SELECT 1 --c\r; DROP TABLE t", "block:no_drop@1"),
    ("SELECT 1 /* /* */ ; DROP TABLE t */", "allow"),
    ('DROP TABLE "public"."Customers"', "block:no_drop"),
    ('DELETE FROM "public"."Customers" WHERE "Id" = "Id"', "block:where_required"),
    ("delete from t where 1=1", "block:where_required"),
    ("DELETE FROM t WHERE NOT NOT true", "block:where_required"),
    ("DELETE FROM t WHERE id > 5 OR NOT id > 5", "block:where_required"),
    ("DELETE FROM t WHERE id <= 5 OR id > 5", "block:where_required"),
    ("DELETE FROM t WHERE EXISTS (SELECT 1)", "block:where_required"),
    ("DELETE FROM t WHERE random() >= 0", "block:where_required"),
    ("DELETE FROM t WHERE $1", "block:where_required"),
    (
        "WITH a AS (SELECT 1), b AS (DELETE FROM t RETURNING 1) SELECT * FROM a",
        ("block:where_required"),
    ),
    ("explain (analyze, format json) delete from t", "block:where_required"),
    ("COPY (DELETE FROM t RETURNING *) TO STDOUT", "block:where_required"),
    (
        "CREATE TABLE x AS WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        ("block:where_required"),
    ),
    ("SELECT 1\u00a0; DROP TABLE t", "block:unknown"),
    ("SELECT U&\"\\0070g_read_file\"('/x')", "block:unknown"),
    ("SELECT " + "(" * 100 + "1" + ")" * 100, "block:unknown"),
]


@pytest.mark.parametrize(("sql", "expected"), OBFUSCATED)
def test_obfuscation(sql: str, expected: str) -> None:
    assert judge(sql, GuardrailRules()) == expected
