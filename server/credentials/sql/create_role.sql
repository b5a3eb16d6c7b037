-- One role per session. LOGIN only until the deadline; INHERIT so the grant
-- roles' privileges apply; everything that could widen its reach is off; the
-- password arrives as a SCRAM verifier, never as plaintext.
CREATE ROLE {role} WITH
    LOGIN
    INHERIT
    NOSUPERUSER
    NOCREATEDB
    NOCREATEROLE
    NOREPLICATION
    NOBYPASSRLS
    CONNECTION LIMIT {connection_limit}
    PASSWORD {verifier}
    VALID UNTIL {valid_until}
    IN ROLE {in_roles}
