"""The operator's API under /admin, guarded by the ADMIN_TOKEN bearer token."""
