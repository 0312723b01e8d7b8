"""
Operations: Prometheus metrics (L{apicache.ops.metrics}), JSON log lines and
the access log (L{apicache.ops.logs}), readiness checks
(L{apicache.ops.health}), W3C trace context (L{apicache.ops.tracing}) and
the timing of upstream answers (L{apicache.ops.instrument}).  Leaves: they
import nothing of the layers above them.
"""
