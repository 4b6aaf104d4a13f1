"""``make deploy``: bundle builder, health check, and the device-side commands the Ansible
playbook (``deploy/ansible/``) calls."""
