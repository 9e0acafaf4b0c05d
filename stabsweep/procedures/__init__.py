"""The playbook's procedures: plan trials, run them, analyse, report (docs/architecture.md)."""
