"""Forgeflow's Spark data engine: ``python -m spark_ops.run SPEC_URI``.

Readers map raw files onto the canonical record schemas, operators clean them, and the engine writes a
dataset version (Parquet + manifest + quarantine). Kept free of imports so ``import spark_ops`` is cheap.
"""
