"""Just-in-time access: requests, approvals and the grants they turn into.

:mod:`server.approvals.machine` is the pure state machine, :mod:`.repo` keeps
requests in the store with conditional updates, and :mod:`.service` ties both
to the policy, the audit log and the notifications.
"""
