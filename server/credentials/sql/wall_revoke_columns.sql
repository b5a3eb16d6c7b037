REVOKE SELECT ({columns}) ON TABLE {relation} FROM {role}
