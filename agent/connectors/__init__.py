"""One folder per remote system (Sentinel, ServiceNow, Microsoft Graph), plus what they share:
the one HTTP choke point (:mod:`.http`), its retry policy (:mod:`.retry`) and Entra ID tokens
(:mod:`.entra`)."""
