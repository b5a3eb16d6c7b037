-- A session limit the role carries into every login (statement_timeout, ...):
-- it holds even for a connection that does not go through the gateway.
ALTER ROLE {role} SET {setting} = {value}
