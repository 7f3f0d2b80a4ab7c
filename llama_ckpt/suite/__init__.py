from .kinds import PhaseResult, run

__all__ = ["PhaseResult", "run"]
