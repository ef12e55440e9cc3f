//! The gcs backend of leasehold (under construction: not yet usable).
