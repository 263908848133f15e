"""Microsoft Sentinel (the ARM ``Microsoft.SecurityInsights`` API): client, wire models and the
follow-ups of Defender merges."""
