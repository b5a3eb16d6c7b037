-- REASSIGN/DROP OWNED need the privileges of the role whose objects they
-- touch; a CREATEROLE admin that is not superuser gets them by membership.
GRANT {role} TO CURRENT_USER
