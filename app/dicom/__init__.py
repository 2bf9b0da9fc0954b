"""The desk's DICOM layer: pure library, no Flask (the job layer in app/transfers uses it).

ae.py      nodes, timeouts, our AE, presentation contexts, associations (TCP_NODELAY)
errors.py  pynetdicom outcomes -> DicomFailure(code, plain, retryable)
scu.py     echo, find_studies, find_instances, send_files, retrieve_study (C-GET / C-MOVE)
wire.py    Wire: PDUs, P-DATA framing, command sets, data sets streamed (the desk's own associations)
store_link.py  Link, StoreLink: the associations we request (C-STORE from files)
get_link.py    GetLink: C-GET on our own association, each instance straight to its file
find_link.py   FindLink: C-FIND on our own association (listings read as text, no pydicom)
scp.py     GatewaySCP: the Storage SCP that receives inbound studies, with quarantine; Incoming
acceptor.py  StorageServer: the associations the gateway accepts, each on a thread of its own
fixup.py   fix_up (Patient ID := S number), compare_with_register
synth.py   synthetic studies for tests, demos and benchmarks
"""

from app.dicom.ae import AEConfig, Node, Timeouts
from app.dicom.errors import DicomFailure

__all__ = ["AEConfig", "DicomFailure", "Node", "Timeouts"]
