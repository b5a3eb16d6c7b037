-- Before REASSIGN OWNED hands what a session created to the admin role, what
-- would run with its owner's rights is made to run with its caller's: as the
-- admin's, a SECURITY DEFINER routine would act with CREATEROLE and ADMIN
-- OPTION on the grant roles for whoever may call it, a view would read tables
-- with the admin's privileges, and a rule's actions would run as the admin.
-- Routines become SECURITY INVOKER and views security_invoker (PostgreSQL
-- 15+; before that, and on relations that carry rules, others' privileges on
-- the relation are revoked instead). Everything else a migration made stays as
-- it made it: tables, data, triggers, grants. {oid} is the role's OID.
DO $disarm$
DECLARE
    found record;
    invoker_views boolean := current_setting('server_version_num')::int >= 150000;
BEGIN
    FOR found IN
        SELECT p.oid::regprocedure::text AS routine FROM pg_proc p
        WHERE p.proowner = {oid} AND p.prosecdef
    LOOP
        EXECUTE 'ALTER ROUTINE ' || found.routine || ' SECURITY INVOKER';
    END LOOP;
    IF invoker_views THEN
        FOR found IN
            SELECT c.oid::regclass::text AS relation FROM pg_class c
            WHERE c.relowner = {oid} AND c.relkind = 'v'
        LOOP
            EXECUTE 'ALTER VIEW ' || found.relation || ' SET (security_invoker = true)';
        END LOOP;
    END IF;
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
          AND ((c.relkind = 'v' AND NOT invoker_views)
               OR EXISTS (SELECT 1 FROM pg_rewrite r
                          WHERE r.ev_class = c.oid AND r.rulename <> '_RETURN'))
    LOOP
        EXECUTE 'REVOKE ALL ON ' || CASE WHEN found.sequence THEN 'SEQUENCE ' ELSE 'TABLE ' END
            || found.relation || ' FROM '
            || CASE WHEN found.grantee = 0 THEN 'PUBLIC'
                    ELSE quote_ident(pg_get_userbyid(found.grantee)) END
            || ' CASCADE';
    END LOOP;
END
$disarm$
