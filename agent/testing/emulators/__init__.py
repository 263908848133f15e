"""Emulators of Entra ID, the Sentinel management API and the ServiceNow Table API."""
