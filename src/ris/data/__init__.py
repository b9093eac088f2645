"""Data stage: obtain the image collection (download, archive or folder) and catalogue it."""

from ris.data.catalog import scan_images
from ris.data.download import ChecksumError, DownloadError, download_file, extract_archive, md5sum
from ris.data.prepare import PreparedCollection, prepare_collection

__all__ = [
    "ChecksumError",
    "DownloadError",
    "PreparedCollection",
    "download_file",
    "extract_archive",
    "md5sum",
    "prepare_collection",
    "scan_images",
]
