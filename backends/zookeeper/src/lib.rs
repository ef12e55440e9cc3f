//! The zookeeper backend of leasehold (under construction: not yet usable).
