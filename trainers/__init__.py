"""Model engines: training (``python -m trainers.train SPEC``) and evaluation (``python -m trainers.evaluate SPEC``).

Both follow the spec-file contract of ``tasks.engine`` and log to MLflow; see each module's docstring.
"""
