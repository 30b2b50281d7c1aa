"""dicomproxy: a hospital-side DICOM proxy between an imaging cloud, the RIS exam view and the PACS."""

from importlib.metadata import PackageNotFoundError, version

try:
    # The installed distribution's version: pyproject.toml, or scripts/package.sh --version in a package.
    __version__ = version("dicomproxy")
except PackageNotFoundError:  # a source tree on sys.path without an install
    __version__ = "0+unknown"
