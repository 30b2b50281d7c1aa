"""Thin DIMSE handlers, bound to one :class:`~dicomproxy.context.AppContext`.

Each handler translates between pynetdicom events and the service modules, and turns a
:class:`~dicomproxy.errors.DicomServiceError` into its status in one place.
"""
