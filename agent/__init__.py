"""sentinel-snow-sync: keeps Microsoft Sentinel and ServiceNow incidents in sync."""

__version__ = "0.1.0"
