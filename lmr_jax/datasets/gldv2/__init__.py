"""Google Landmarks Dataset v2 tooling.

Modules: ``csv_files`` (readers of the official metadata CSVs), ``lists`` (the clean / c2x /
full / all lists and the validation set), ``prepare`` (lists + image store + report into an
output folder), ``report`` (the human-readable summary).
"""
