"""Declarative moderation policy: versioned YAML rules evaluated by the decide stage."""
