"""Errors that stop a run with a message for the user (import-light: the entry points catch them early)."""


class NonFiniteError(RuntimeError):
    """Training produced a NaN/inf loss, gradient or weight; raised instead of going on (or saving it)."""
