"""The CPU background worker: everything that must not run on a GPU worker
(webhook deliveries, periodic maintenance such as retention and reconciliation).

Torch-free: it runs from the API's image. Start it with `python -m common.background`.
Tasks register themselves in `common.background.tasks` modules listed in TASK_MODULES;
periodic ones add entries to `BEAT_SCHEDULE` there.
"""
