"""`make bench`: measurements that tests must not make (speed, rates), in one table."""
