-- A table-level SELECT makes column grants moot: it goes first (and takes the
-- role's column-level SELECT on the relation with it).
REVOKE SELECT ON TABLE {relation} FROM {role}
