"""Signed webhooks (Standard Webhooks, standardwebhooks.com) for job events.

- `events`: what happens to a job becomes delivery rows in the job change's own
  transaction (an outbox), sent to the CPU queue after the commit.
- `delivery`: the CPU worker's side: one attempt at a time, retries, the sweep.
- `signing`, `signing_keys`: `whsec_` secrets, their rotation, the signature header.
- `manage`: endpoints, secrets and deliveries of an account, for the API and the CLI.
"""
