"""`ssd-img2img client`: the tenant's command line. HTTP only (no database, no settings
of the service): it works against any deployment, with an API URL and an API key."""
