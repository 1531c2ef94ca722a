"""What `python -m lutra.report` is built from: `runs` (finding and reading run directories, variants, per-round
rows, mean and spread over seeds), `tables` (report.csv, report.md) and `plots` (one figure per question)."""
