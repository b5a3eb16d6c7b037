-- Objects a session created (in schemas where it may create) are kept and
-- handed to the admin role rather than silently destroyed.
REASSIGN OWNED BY {role} TO CURRENT_USER
