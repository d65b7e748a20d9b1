"""The airlock: export requests, their automatic checks, the review workflow and release.

- :mod:`sandbox.exports.store`: tables (requests, files, reviews, events) and the blob store.
- :mod:`sandbox.exports.workflow`: the one transition table and every operation on a request.
- :mod:`sandbox.exports.checks`: file gates, identifier leak, SDC, provenance, differencing.
- :mod:`sandbox.exports.context`: what the checks need from the state (ids, released answers).
- :mod:`sandbox.exports.tables`: CSV/Parquet tables as plain values for checks and previews.
- :mod:`sandbox.exports.views`: what each caller may see of a request.
"""
