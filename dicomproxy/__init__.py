"""dicomproxy: a hospital-side DICOM proxy between an imaging cloud, the RIS exam view and the PACS."""

__version__ = "0.1.0"
