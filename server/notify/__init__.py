"""Notifications the broker sends out (webhooks); see :mod:`server.notify.webhooks`."""
