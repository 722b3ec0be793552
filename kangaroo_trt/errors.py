"""One error family for everything a user can get wrong.

A ``KangarooError`` is a user error: its message is one line that says what is wrong and what to do.
The CLIs print it without a traceback and exit non-zero. Anything else is an internal error and keeps
its traceback.
"""


class KangarooError(Exception):
    """A user-facing error whose message is a single actionable line."""


class ConfigError(KangarooError):
    """A model, adapter or decoding setting is unsupported or out of range."""


class WeightsError(KangarooError):
    """A checkpoint is missing keys, has leftover keys, or has tensors of the wrong shape."""


class EngineDirError(KangarooError):
    """An engine directory is missing, corrupt, or was written by an incompatible version."""


class InputError(KangarooError):
    """A request cannot be served as given (e.g. the prompt does not fit the KV cache)."""


class BackendError(KangarooError):
    """A runtime backend is not installed or cannot run on this machine."""
