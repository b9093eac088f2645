"""Data stage: obtain the image collection (``download``, ``prepare``: download, archive or folder), catalogue it
(``catalog``) and split it (``split``).

Import the modules themselves: this package imports nothing, so a stage that only reads the image table or the
split does not depend on (and is not re-run for) the download code.
"""
