"""What the study asks and how it decides, below the runner and the report:
the phase catalogue (:mod:`.phases`), the guide's claims and their verdict
rule (:mod:`.claims`), and where a run's answers are (:mod:`.runs`)."""
