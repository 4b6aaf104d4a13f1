"""``make deploy``: bundle builder, health check, device-side commands (``deploy/ansible/``)."""
