from twisted.application.service import ServiceMaker

apicache = ServiceMaker(
    "apicache",
    "apicache.tap",
    "A per-tenant caching proxy for external API calls.",
    "apicache",
)
