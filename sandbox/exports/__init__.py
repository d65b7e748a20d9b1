"""The airlock: export requests, their automatic checks, the review workflow and release.

- :mod:`sandbox.state.exports_repo`: the tables (requests, files, reviews, events, overrides), typed records.
- :mod:`sandbox.exports.store`: the blob store and request ids.
- :mod:`sandbox.exports.deps`: the stores the workflow and uploads take (never the whole ``Services``).
- :mod:`sandbox.exports.workflow`: the one transition table and every operation on a request.
- :mod:`sandbox.exports.checks`: file gates, identifier leak, SDC, provenance, differencing.
- :mod:`sandbox.exports.context`: what the checks need from the state (ids, released answers).
- :mod:`sandbox.exports.tables`: CSV/Parquet tables as plain values for checks and previews.
- :mod:`sandbox.exports.views`: what each caller may see of a request (the JSON, built from the records).
"""
