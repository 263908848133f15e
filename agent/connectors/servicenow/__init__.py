"""ServiceNow (the Table API): client, wire models, encoded queries, table profiles, field proof,
routing, journal text and rate-limit pauses."""
