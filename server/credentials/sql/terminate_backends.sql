-- Matched on the role's OID: a backend whose role has been dropped still
-- carries its usesysid while its usename reads NULL.
SELECT pid, pg_terminate_backend(pid)
FROM pg_stat_activity
WHERE usesysid = %(oid)s::oid AND pid <> pg_backend_pid()
