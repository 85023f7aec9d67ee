"""``make fleet``: a wsgate fleet in network namespaces, driven through DNS changes, a
graceful stop, a killed node and a Redis restart (issue 17; docs/fleet.md).

:mod:`fleet.run` is the entry point (``python -m fleet``); :mod:`fleet.net` builds the
network, :mod:`fleet.hosts` starts the programs, :mod:`fleet.load` is the client host,
:mod:`fleet.backend` the backends, :mod:`fleet.ring` the expected routing and
:mod:`fleet.report` the figures and checks.
"""
