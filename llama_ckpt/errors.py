"""The exception that reaches the user as a one-line message, and what a
failing save or load may raise, and the parser of every command line."""

import argparse

class UserError(Exception):
    """Bad input or an unusable environment: printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, exit code 2, as every command line of the package's."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def __getattr__(name: str):
    """``FAILURES``: what a failing save or load may raise. torch.distributed.checkpoint's CheckpointException
    derives from BaseException, not Exception, so a plain ``except Exception`` lets it through; interrupts
    (KeyboardInterrupt, SystemExit) are never in it. Made on first use, so that what never saves or loads
    (``project``) starts without importing torch."""
    if name != "FAILURES":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from torch.distributed.checkpoint.api import CheckpointException

    globals()["FAILURES"] = failures = (Exception, CheckpointException)
    return failures
