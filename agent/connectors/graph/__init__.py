"""Microsoft Graph security API (Defender XDR incidents)."""
