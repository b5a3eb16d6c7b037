-- Before REASSIGN OWNED hands what a session created to the admin role, the
-- session's code goes and its objects serve nobody else: as the admin's, a
-- SECURITY DEFINER function would run with the admin's rights (CREATEROLE,
-- ADMIN OPTION on the grant roles) for whoever may call it, and so would a
-- function an index calls during maintenance; a view or a rule would reach
-- tables with the admin's privileges for whoever the session let use it.
-- So the role's routines are dropped (with what depends on them), and every
-- privilege others hold on its relations, or on their columns, is revoked.
-- The data stays, for the admin to give out again. {oid} is the role's OID.
DO $disarm$
DECLARE
    routine text;
    found record;
BEGIN
    -- Named before any is dropped: one may go with another (CASCADE).
    FOREACH routine IN ARRAY ARRAY(
        SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.proowner = {oid}
    ) LOOP
        EXECUTE 'DROP ROUTINE IF EXISTS ' || routine || ' CASCADE';
    END LOOP;
    FOR found IN
        SELECT DISTINCT c.oid::regclass::text AS relation, c.relkind = 'S' AS sequence,
               a.grantee
        FROM pg_class c
        CROSS JOIN LATERAL (
            SELECT e.grantee FROM aclexplode(c.relacl) e
            UNION
            SELECT e.grantee FROM pg_attribute att, aclexplode(att.attacl) e
            WHERE att.attrelid = c.oid
        ) a
        WHERE c.relowner = {oid} AND a.grantee <> c.relowner
    LOOP
        EXECUTE 'REVOKE ALL ON ' || CASE WHEN found.sequence THEN 'SEQUENCE ' ELSE 'TABLE ' END
            || found.relation || ' FROM '
            || CASE WHEN found.grantee = 0 THEN 'PUBLIC'
                    ELSE quote_ident(pg_get_userbyid(found.grantee)) END
            || ' CASCADE';
    END LOOP;
END
$disarm$
