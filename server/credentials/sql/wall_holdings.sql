-- What each role holds itself on one relation: SELECT on all of it, and SELECT
-- on which of the given (masked) columns. Privileges through other roles or
-- PUBLIC are not listed here (wall_check.sql sees them).
SELECT
    g.rolname,
    EXISTS (
        SELECT 1 FROM aclexplode(c.relacl) AS a
        WHERE a.grantee = g.oid AND a.privilege_type = 'SELECT'
    ) AS whole,
    ARRAY(
        SELECT att.attname::text
        FROM pg_attribute att, aclexplode(att.attacl) AS a
        WHERE att.attrelid = c.oid
            AND att.attname = ANY(%(masked)s::text[])
            AND a.grantee = g.oid
            AND a.privilege_type = 'SELECT'
        ORDER BY att.attnum
    ) AS columns
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN pg_roles g
WHERE n.nspname = %(schema)s AND c.relname = %(table)s AND g.rolname = ANY(%(roles)s::text[])
ORDER BY g.rolname
