"""The reviewers' web inbox, served by the broker under ``/ui/`` (see :mod:`server.ui.web`)."""
