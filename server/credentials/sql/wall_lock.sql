-- One broker at a time changes grant roles' privileges (concurrent GRANTs on
-- one relation can fail with "tuple concurrently updated"); released at commit.
SELECT pg_advisory_xact_lock(hashtext('dbaccess column walls'))
