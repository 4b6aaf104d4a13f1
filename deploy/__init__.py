"""``make deploy``: the bundle builder, the health check and the device-side commands that
the Ansible playbook (``deploy/ansible/``) calls."""
