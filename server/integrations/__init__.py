"""Integrations with the places reviewers already are (Slack)."""
