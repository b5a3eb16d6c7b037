-- Whatever is left: privileges granted to the role, default privileges.
DROP OWNED BY {role}
