"""The playbook's procedures: plan trials, run them, analyse, report (DESIGN §7)."""
