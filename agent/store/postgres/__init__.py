"""The PostgreSQL state store, shared by an active/standby pair of agents."""
