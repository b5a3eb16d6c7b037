-- What the role could read before, less the masked columns.
GRANT SELECT ({columns}) ON TABLE {relation} TO {role}
