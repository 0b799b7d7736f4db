"""Embedded dev/test stack: real PostgreSQL, Redis and SeaweedFS (S3) on loopback ports,
started from pip-installed binaries inside a state folder and stopped by PID.

Torch-free; imports nothing heavy at package import time.
"""

from devstack.service import Service
from devstack.stack import Services, purge_state, start_services, stop_services

__all__ = ["Service", "Services", "purge_state", "start_services", "stop_services"]
