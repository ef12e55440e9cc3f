//! The leasehold facade.
