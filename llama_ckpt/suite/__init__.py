"""Running the suite: one class per kind of phase and ``run(phase_id,
**params)``, the call every notebook makes (:mod:`.kinds`); papermill over
every notebook, then the summary (:mod:`.runner`)."""

from .kinds import PhaseResult, run

__all__ = ["PhaseResult", "run"]
