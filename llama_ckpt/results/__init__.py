"""Result rows: the schema, JSON Lines in and out, the environment record, and
the comparison table.

A results file holds these kinds of record, told apart by ``record``:
``"environment"`` (one per run: versions, machine, file system, git commit,
the machine profile), ``"measurement"`` (one per approach and repeat, every
sample kept), ``"training"`` (07's checkpoints in a loop), ``"sustained"``
(an approach's checkpoints saved back to back) and ``"end"`` (written last: ``complete`` true when every planned
row is in, false after Ctrl-C; a run killed outright has none, and counts as
incomplete too). Rows are appended and flushed as each finishes, so an
interrupted run keeps what it measured.

The modules: :mod:`.schema` (the fields, which rows count), :mod:`.files`
(JSON Lines in and out), :mod:`.environment` (the record a run writes
first), :mod:`.profile` (the machine profile it holds, and the disk's
rates), :mod:`.bounds` (the shortest time a row's work can take),
:mod:`.stats` (medians, spreads, changes) and :mod:`.text` (the
comparison table); the names below are the ones the rest of the package uses.
"""

from .environment import GIT_COMMIT, environment_record
from .files import Loaded, ResultsWriter, group_by_run, incomplete_runs, read_results
from .profile import MachineProfile, Rate, as_profile, disk_rates
from .schema import MEASUREMENT_FIELDS, SUSTAINED_FIELDS, TRAINING_FIELDS, is_valid, measurement_row, \
    sustained_row, training_row
from .stats import Stat, above, change, check_comparable, spread, summarize
from .text import comparison_table, fmt_bytes, fmt_stat, reference_line, render

__all__ = ["GIT_COMMIT", "environment_record", "Loaded", "ResultsWriter", "group_by_run", "incomplete_runs",
           "read_results", "MachineProfile", "Rate", "as_profile", "disk_rates", "MEASUREMENT_FIELDS",
           "SUSTAINED_FIELDS", "TRAINING_FIELDS", "is_valid", "measurement_row",
           "sustained_row", "training_row",
           "Stat", "above", "change", "check_comparable", "spread", "summarize", "comparison_table", "fmt_bytes",
           "fmt_stat", "reference_line", "render"]
