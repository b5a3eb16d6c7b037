SELECT count(*)
FROM pg_stat_activity
WHERE usesysid = %(oid)s::oid AND (usename IS NULL OR usename = %(name)s)
