-- The roles a session of these grants reads with: the grants and every role
-- they inherit from, limited to the ones a DBA delegated to us WITH ADMIN
-- OPTION (NOLOGIN group roles, as check_grants.sql requires of grants). Only
-- these are changed to withhold masked columns; a privilege that reaches the
-- session any other way is found by wall_check.sql, and the session refused.
WITH RECURSIVE me AS (
    SELECT oid, rolsuper FROM pg_roles WHERE rolname = current_user
), reach(oid) AS (
    SELECT oid FROM pg_roles WHERE rolname = ANY(%(grants)s::text[])
    UNION
    SELECT m.roleid
    FROM pg_auth_members m
    JOIN reach ON m.member = reach.oid
    JOIN pg_roles member ON member.oid = reach.oid
    WHERE member.rolinherit
)
SELECT r.rolname
FROM reach
JOIN pg_roles r ON r.oid = reach.oid
WHERE NOT (r.rolsuper OR r.rolcanlogin OR r.rolcreaterole OR r.rolbypassrls)
    AND ((SELECT rolsuper FROM me) OR EXISTS (
        SELECT 1 FROM pg_auth_members m
        WHERE m.roleid = r.oid AND m.member = (SELECT oid FROM me) AND m.admin_option
    ))
ORDER BY r.rolname
