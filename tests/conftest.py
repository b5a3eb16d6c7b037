"""Shared fixtures are defined in tests/fix_*.py and registered here."""

pytest_plugins = [
    "tests.fix_tmp",
    "tests.fix_pg",
    "tests.fix_broker",
    "tests.fix_oidc",
    "tests.fix_webhook",
    "tests.fix_vault",
    "tests.fix_store",
    "tests.fix_s3",
    "tests.fix_slack",
    "tests.fix_mcp",
]
