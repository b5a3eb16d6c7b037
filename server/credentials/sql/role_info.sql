-- A role is managed (ours to alter or drop) when it is a plain member of the
-- marker role: not through ADMIN OPTION (that is how the admin role itself
-- holds the marker), not superuser, not able to create roles, and not us.
SELECT
    r.oid::bigint,
    EXISTS (
        SELECT 1 FROM pg_auth_members m JOIN pg_roles mk ON mk.oid = m.roleid
        WHERE m.member = r.oid AND mk.rolname = %(marker)s
    )
    AND NOT EXISTS (
        SELECT 1 FROM pg_auth_members m JOIN pg_roles mk ON mk.oid = m.roleid
        WHERE m.member = r.oid AND mk.rolname = %(marker)s AND m.admin_option
    )
    AND NOT r.rolsuper
    AND NOT r.rolcreaterole
    AND r.rolname <> current_user AS managed,
    shobj_description(r.oid, 'pg_authid')
FROM pg_roles r
WHERE r.rolname = %(name)s
