-- Session roles: plain members of the marker role (see role_info.sql), with
-- their comment (whose they are: mark_role.sql). An
-- infinite deadline reads as NULL (no deadline); -infinity as the epoch
-- (already expired), since neither fits a Python datetime.
SELECT
    r.rolname,
    CASE
        WHEN r.rolvaliduntil = '-infinity' THEN 'epoch'::timestamptz
        WHEN isfinite(r.rolvaliduntil) THEN r.rolvaliduntil
    END,
    shobj_description(r.oid, 'pg_authid')
FROM pg_roles r
WHERE EXISTS (
        SELECT 1 FROM pg_auth_members m JOIN pg_roles mk ON mk.oid = m.roleid
        WHERE m.member = r.oid AND mk.rolname = %(marker)s
    )
    AND NOT EXISTS (
        SELECT 1 FROM pg_auth_members m JOIN pg_roles mk ON mk.oid = m.roleid
        WHERE m.member = r.oid AND mk.rolname = %(marker)s AND m.admin_option
    )
    AND NOT r.rolsuper
    AND NOT r.rolcreaterole
    AND r.rolname <> current_user
ORDER BY r.rolname
