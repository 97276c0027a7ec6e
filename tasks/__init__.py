"""Forgeflow platform core: settings, lake, catalogue, specs, runners and the callables behind DAG tasks.

Nothing here imports a heavy module at import time; DAG files import this package while parsing.
"""
