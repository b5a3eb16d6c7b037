-- The marker role, then each requested grant role: does it exist, and may we
-- hand it out? The first row holds the marker role's OID (NULL when it does not
-- exist) and nothing else; one row per grant follows, in the order asked.
-- A grant must be a group role (NOLOGIN, not superuser), must not be a session
-- role itself, and must have been delegated to us WITH ADMIN OPTION (unless we
-- are superuser), so that the broker hands out only what a DBA delegated.
WITH me AS (
    SELECT oid, rolsuper FROM pg_roles WHERE rolname = current_user
), marker AS (
    SELECT oid FROM pg_roles WHERE rolname = %(marker)s
)
SELECT (SELECT oid FROM marker)::bigint, NULL::text, NULL::bool, NULL::bool, NULL::bool,
    NULL::bool, 0::bigint AS position
UNION ALL
SELECT
    NULL::bigint,
    g.name,
    r.oid IS NOT NULL AS role_exists,
    coalesce(r.rolsuper OR r.rolcanlogin OR r.rolcreaterole OR r.rolbypassrls, false)
        AS too_powerful,
    EXISTS (
        SELECT 1 FROM pg_auth_members m
        WHERE m.member = r.oid AND m.roleid IN (SELECT oid FROM marker)
    ) OR r.oid IN (SELECT oid FROM marker) AS is_managed,
    (SELECT rolsuper FROM me) OR EXISTS (
        SELECT 1 FROM pg_auth_members m
        WHERE m.roleid = r.oid AND m.member = (SELECT oid FROM me) AND m.admin_option
    ) AS delegated,
    g.position
FROM unnest(%(grants)s::text[]) WITH ORDINALITY AS g(name, position)
LEFT JOIN pg_roles r ON r.rolname = g.name
ORDER BY position
