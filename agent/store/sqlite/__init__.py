"""The SQLite state store (the default): the shadow database and its single-instance lock."""
