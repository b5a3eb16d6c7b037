-- Whose the new role is: its deployment, the replica that made it and its
-- session (base.role_comment). Only a role with CREATEROLE may comment on a
-- role, and a session role has none, so a session cannot pass for another's.
COMMENT ON ROLE {role} IS {comment}
