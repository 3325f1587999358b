"""A small app team's project: the tasks of a toy shop, tested with taskq's pytest plugin."""
