"""The exception that reaches the user as a one-line message, and what a
failing save or load may raise."""

from torch.distributed.checkpoint.api import CheckpointException


class UserError(Exception):
    """Bad input or an unusable environment: printed as one line, exit code 2."""


# torch.distributed.checkpoint's CheckpointException derives from
# BaseException, not Exception, so a plain ``except Exception`` lets it
# through. Interrupts (KeyboardInterrupt, SystemExit) are never in here.
FAILURES = (Exception, CheckpointException)
