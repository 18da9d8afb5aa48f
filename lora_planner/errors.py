"""One error type for everything a user can get wrong.

Every message follows one template (after scikit-learn's parameter validation):
"<field> must be <rule>; got <value>. <fix>" — one line, so the CLI can print it and exit 2.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class LoraPlannerError(ValueError):
    """A user-facing error: names the field, the rule, the value given and a fix."""

    def __init__(self, field: str, rule: str, value: object, fix: str = ""):
        self.field, self.rule, self.value, self.fix = field, rule, value, fix
        shown = value if isinstance(value, str) else repr(value)
        msg = f"{field} must be {rule}; got {shown}."
        if fix:
            msg += f" {fix}"
        super().__init__(" ".join(msg.split()))

    def __reduce__(self):
        # rebuilt from its parts, so it survives the trip back from a worker process
        return (type(self), (self.field, self.rule, self.value, self.fix))


def nearest(name: str, known: Iterable[str]) -> str:
    """A 'did you mean' clause for a misspelt name, or a list of the known names."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    if close:
        return f"Did you mean '{close[0]}'? Known: {', '.join(known)}."
    return f"Known: {', '.join(known)}."
