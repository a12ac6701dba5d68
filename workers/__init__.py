"""Job execution: the job contract, blob stores, the Celery app and the embedded pool.

Imports flow ``app -> workers -> models``; nothing here imports torch at module level.
"""
