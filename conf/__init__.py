"""The configs of her2study (the repository's top-level ``conf/``), shipped inside the package.

Hydra reads them as ``pkg://her2study.conf``.
"""
