"""``make deploy``: the bundle builder, the health check and the device-side commands the Ansible playbook (``deploy/ansible/``) calls."""
