"""`python -m pdstack status -s STACK`: what on the hosts differs from what the stack deployed.

check.py is pure (expected state from the HostPlans, the probe script, the verdict, repair commands);
live.py does the I/O (the Pulumi CLI, ssh to every host in parallel).
"""
