"""totes: the shared layer of the totesys-to-warehouse pipeline.

Each module owns one concern (configuration, database access, S3 storage, key
layout, extraction, transformation, loading) so the three Lambda handlers stay thin.
"""
