//! The etcd backend of leasehold (under construction: not yet usable).
