"""The CPU background worker: everything that must not run on a GPU worker
(webhook deliveries, periodic maintenance such as retention and reconciliation).

Torch-free: it runs from the API's image. Start it with `python -m background`.
Its tasks live in the modules that `background.app.TASK_MODULES` lists; periodic ones
add entries to a `BEAT_SCHEDULE` of their module.
"""
