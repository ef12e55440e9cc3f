//! The engine's view of the lease table (the record-store adapter).

use leasehold_core::driver::DynBackend;
use leasehold_core::{Error, Result};

use crate::table::LeaseTable;

/// The backend for the engine. The record-store seam is not on main yet:
/// until it is, building one says so.
pub(crate) fn dyn_backend(table: LeaseTable) -> Result<DynBackend> {
    drop(table);
    Err(Error::NotSupported {
        operation: "campaign (the record-store adapter comes with the new Backend seam)",
        backend: crate::error::NAME,
    })
}
