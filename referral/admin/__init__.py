"""Directory maintenance by admins: validated edits, optimistic locking, the change log."""
