"""
apicache: a caching proxy daemon for external API calls.
"""

__version__ = "0.1.0"
