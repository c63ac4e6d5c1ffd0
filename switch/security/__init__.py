"""Data at rest: the key-encryption key and the data key (``keystore``), sealed checkpoint and
holder files (``sealed_files``), file modes (``modes``) and operator token hashes (``tokens``).
"""
