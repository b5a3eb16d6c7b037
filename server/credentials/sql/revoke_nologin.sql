-- First wall: no new logins from now on, whatever the password or deadline.
ALTER ROLE {role} NOLOGIN
