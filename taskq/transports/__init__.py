"""kombu transports that taskq ships: Redis with leases (``taskq.transports.redis``)."""
