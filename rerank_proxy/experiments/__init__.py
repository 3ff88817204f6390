"""Search experiments: the UBI request extension and its query records (and, beside them, arms)."""
