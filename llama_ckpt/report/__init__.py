"""Reading a run: tables, the guide's claims and their verdicts, seaborn charts, the summary."""
