"""The HTTP front end (FastAPI): validate, stream uploads under limits, enqueue, answer."""
