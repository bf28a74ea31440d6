"""The exception hierarchy: every failure nwor reports is a NworError with its context kept as attributes."""
from __future__ import annotations


class NworError(Exception):
    """Base class. `str(err)` is the one line a user sees; attributes keep the context."""

    def __init__(self, message: str, **context):
        super().__init__(message)
        self.message = message
        self.context = context

    def __reduce__(self):
        # Exceptions with keyword context do not pickle by default; runs cross process boundaries.
        return (_rebuild, (type(self), self.message, self.context))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls, message, context):
    return cls(message, **context)


class ConfigError(NworError):
    """A parameter, YAML file or command-line value is invalid."""


class FeatureUnavailable(ConfigError):
    """A run asks for an engine feature that the installed vLLM build cannot provide."""


def is_refusal(exception_name: str) -> bool:
    """Whether an exception raised in a notebook kernel, known here only by its class name (papermill's
    `ename`), refuses the run: a `ConfigError` (bad input, a feature this build lacks) is the request's
    fault, not the run's. The class hierarchy decides, not a list of names."""
    cls = globals().get(exception_name)
    return isinstance(cls, type) and issubclass(cls, ConfigError)


class RunFailed(NworError):
    """A run's notebook or script failed; `notebook` says where to look."""


class EngineStartFailed(RunFailed):
    """vLLM's engine did not start; the message quotes the root cause from `log_path`, the run's vLLM log."""


class ProfilerError(NworError):
    """ncu exited non-zero, timed out, or measured nothing; `log_path` holds its log."""


class NcuNotAvailable(ProfilerError):
    """No usable `ncu` on this machine (missing binary or no GPU)."""


class SchemaError(NworError):
    """A result file does not match the schema this nwor version reads."""


class OutputsUnwritable(NworError):
    """The outputs folder stopped taking writes mid-suite (full, read-only); the suite stops there."""


class LockHeld(NworError):
    """Another live runner holds the outputs folder."""


class ServerError(NworError):
    """A `vllm serve` process did not become ready, died, or its client failed; `log_path` says where to look."""
