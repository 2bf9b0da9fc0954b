"""CDs in the browser (issue 12; DESIGN "The four flows" 3, Appendices 5 and 6).

A CD's contents are uploaded file by file (`routes`, `uploads`), kept under opaque names
(`storage`), scanned by a worker (`jobs`, `scan`: everything on a CD is hostile), matched
with the request's PAS patient and sent to the local PACS through the import path
(`send`); the CD round (Awaiting Drop-off -> Collected -> Uploaded) and its collection
chart live with the desk.
"""
