"""The exam view (影像云视图): table model, query translation, row → DICOM mapping, checks."""
