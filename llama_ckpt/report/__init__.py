"""Reading a run: tables, the guide's claims and their verdicts, seaborn charts, the summary."""

import pandas as pd

# Tables are read in notebooks and their HTML: never cut a column or a cell to "...".
pd.set_option("display.max_columns", None)
pd.set_option("display.max_colwidth", None)
