"""Who is calling: people with OIDC ID tokens, CI jobs with workload tokens, broker tokens.

People log in at their identity provider with the CLI, which hands the ID token
to the broker; CI jobs and agents hand over the JWT their platform gives them.
The broker verifies either kind (:mod:`server.identity.oidc`), derives an
identity and groups from it (the ``oidc`` server settings for people, the
policy's ``workload_identities`` for jobs, :mod:`server.identity.workload`), and
issues its own short-lived API token, which every later call presents.

Issuer URLs, for the server settings and the policy alike, are checked by
:func:`server.addresses.issuer_url`.
"""
