"""The demo target: a small database with people-like data, its grant roles and the
least-privilege admin role the broker mints session roles with (see ``provision``)."""
