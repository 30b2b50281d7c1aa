"""Order and report files (the exam view's OrderFilePath / ReportFilePath) as DICOM objects.

:mod:`~dicomproxy.reports.fetch` reads a file (http, ftp, file share), :mod:`~dicomproxy.reports.encode`
turns it into an Encapsulated PDF or Secondary Capture object of its study, and
:mod:`~dicomproxy.reports.study` says which files a study has and what C-FIND answers for them.
Push mode sends them with every pushed study; ``[reports] in_retrieve`` also offers them in the
cloud's C-FIND/C-MOVE/C-GET (:mod:`dicomproxy.relay.reports`).
"""
