-- What a DBA provisions on a target for dbaccess (docs/issuers.md): the marker
-- role, grant roles, and the admin role the postgres issuer connects as: not a
-- superuser, CREATEROLE, pg_signal_backend, ADMIN OPTION on the marker and on
-- the grants it may hand out.
CREATE ROLE dbaccess_managed NOLOGIN;
CREATE ROLE app_read NOLOGIN;
CREATE ROLE app_write NOLOGIN IN ROLE app_read;
CREATE ROLE dbaccess_admin LOGIN CREATEROLE PASSWORD 'admin-trial-password';
GRANT pg_signal_backend TO dbaccess_admin;
GRANT dbaccess_managed, app_read, app_write TO dbaccess_admin WITH ADMIN OPTION;
CREATE TABLE public.orders (id bigint PRIMARY KEY, customer text NOT NULL, total numeric);
INSERT INTO public.orders VALUES (1, 'ada', 12.50), (2, 'grace', 99.00);
GRANT SELECT ON public.orders TO app_read;
GRANT INSERT, UPDATE, DELETE ON public.orders TO app_write;
