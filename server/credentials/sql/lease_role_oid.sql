-- The OID of a role a Vault lease created, looked up by the name Vault returned.
SELECT oid::bigint FROM pg_roles WHERE rolname = %(name)s
