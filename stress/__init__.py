"""taskq-stress: run suites over a configuration matrix under injected faults, and judge them."""
