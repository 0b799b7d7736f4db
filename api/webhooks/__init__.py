"""`/v2/webhooks`: a tenant's webhook endpoints, signing secret and deliveries."""
