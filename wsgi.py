"""WSGI entry point: `flask --app wsgi ...` and any WSGI server use `app`."""

import gc

from app import create_app

app = create_app()

# What start-up made (the app, its modules, pydicom's and pynetdicom's dictionaries: about
# 280,000 objects) lives as long as the process. Frozen, the collector's full passes skip
# it: measured in bench/desk.py, such a pass otherwise stalls whichever request triggers it
# by 100-150 ms. Frozen objects are still freed by reference counting; only cycles among
# them would stay, and start-up makes none that end before the process does.
gc.collect()
gc.freeze()
