"""Serving: start model services (vLLM CPU build or the fallback server) and manage their lifecycle.

Entry points: ``python -m serving.deploy SPEC_URI`` (the engine), ``python -m serving.fallback_server``
and ``python -m serving.services list|stop|reap``. Importing this package is cheap (no torch).
"""
