SELECT pg_advisory_unlock(hashtext('dbaccess revoke'), hashtext(%(name)s))
