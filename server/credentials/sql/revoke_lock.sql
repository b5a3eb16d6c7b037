-- One revocation of a role at a time across every broker on the target (held
-- by this admin connection until revoke_unlock.sql).
SELECT pg_advisory_lock(hashtext('dbaccess revoke'), hashtext(%(name)s))
