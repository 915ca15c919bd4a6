"""What went wrong, said by class: must a person act, or will a retry do?

Every failure the pipeline raises on purpose is a :class:`PipelineError`, in one
of two kinds:

* :class:`InputError`: bad data or configuration (a malformed manifest, a
  source column that changed type, a missing setting). The same attempt fails
  the same way every time: a person must act, and retrying only repeats it.
* :class:`TransientError`: the world was not ready (the database unreachable,
  another run committed first). Nothing is wrong with the input; the next
  scheduled run or Lambda's retry will do.

Anything else (an ``AttributeError``, a ``KeyError``) is a bug. Handlers log the
kind and publish ``InputErrors`` for the first kind, which has its own alarm;
the runbook is organised the same way. Decisions are made on the class, never
on a message. Specific errors keep their historical base (``ValueError``...)
as a second parent, so code that catches those still does.
"""
from typing import ClassVar

#: how :func:`kind_of` names each kind in logs (and the runbook's headings).
INPUT, TRANSIENT, UNEXPECTED = "input", "transient", "unexpected"


class PipelineError(Exception):
    """Base of every failure the pipeline raises on purpose."""

    retryable: ClassVar[bool] = True


class InputError(PipelineError):
    """Bad input or configuration: a person must act; a retry fails the same way."""

    retryable = False


class TransientError(PipelineError):
    """The world was not ready: a retry (the next run) will do."""

    retryable = True


class SourceDataError(InputError, ValueError):
    """A source value the pipeline cannot carry exactly; the message names table, key and value.

    Raised rather than letting the value arrive changed (an infinite timestamp as
    ``null``, a BC year as AD, ``NaN`` money): a person corrects the row at the source.
    """


def kind_of(error: BaseException) -> str:
    """Return ``input``, ``transient`` or ``unexpected`` for an error, following its causes.

    A wrapper (a load error naming the manifest, say) takes the kind of the error
    it wraps when it does not say more itself.
    """
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, InputError):
            return INPUT
        if isinstance(seen, TransientError):
            return TRANSIENT
        seen = seen.__cause__
    return UNEXPECTED


#: what a person reading the log should do, by kind.
ADVICE = {
    INPUT: "a person must act: the same input fails the same way (docs/runbook.md, "
           "\"Input errors\")",
    TRANSIENT: "nothing to do unless it repeats: the next run retries (docs/runbook.md, "
               "\"Transient errors\")",
    UNEXPECTED: "a bug or an unclassified failure: read the traceback (docs/runbook.md, "
                "\"Unexpected errors\")",
}
