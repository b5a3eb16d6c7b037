-- Backends of one leased role. Matched on the OID recorded when the lease was
-- issued (a backend keeps it after Vault has dropped the role, when usename
-- reads NULL); the name must agree while the role exists, so a reused OID
-- never points at someone else's backends.
SELECT pid, pg_terminate_backend(pid)
FROM pg_stat_activity
WHERE usesysid = %(oid)s::oid
    AND (usename IS NULL OR usename = %(name)s)
    AND pid <> pg_backend_pid()
