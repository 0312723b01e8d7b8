"""
The process: the root service and its start-up checks
(L{apicache.daemon.service}), ``--workers N`` with its supervisor and the
links between workers (L{apicache.daemon.workers}), and Cloud Foundry
bindings (L{apicache.daemon.vcap}).  L{apicache.tap} wires them.
"""
