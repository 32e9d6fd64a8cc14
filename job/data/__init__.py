"""The prepare step: pairs in (mapped, validated, de-duplicated, split), the evaluation sets out.

- :mod:`job.data.prepare`: loading a CSV/JSON/JSONL/Parquet file or a Hub dataset, column mapping, the seeded
  split and the information-retrieval sets every evaluation reads;
- ``corvane_10k.jsonl``: the embedded default dataset (package data), what the offline demo trains on.
"""
