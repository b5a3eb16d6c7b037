SELECT EXISTS (SELECT 1 FROM pg_roles WHERE oid = %(oid)s::oid)
