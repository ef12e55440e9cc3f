//! The gcs backend built in code (rather than from a URL): win the election,
//! show the fencing token and what the store says, hand over.
//!
//! Run: `docker compose up -d gcs && cargo run --features gcs --example gcs -- [http://127.0.0.1:4443]`

use std::sync::Arc;
use std::time::Duration;

use leasehold::{ElectionOptions, Elector};

#[tokio::main]
async fn main() -> leasehold::Result<()> {
    let endpoint = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:4443".to_owned());
    let backend = leasehold::gcs::GcsBackend::builder()
        .bucket("leasehold")
        .prefix("locks")
        .endpoint(endpoint.as_str())
        .anonymous()
        .build()
        .await?;
    let options = ElectionOptions::new("example-gcs", format!("example-{}", std::process::id()))
        .with_ttl(Duration::from_secs(10));
    let elector = Elector::new(Arc::new(backend), options)?;
    let leadership = elector.lock().await?;
    println!("leading with fencing token {}", leadership.fencing_token());
    println!("the store says the leader is {:?}", elector.leader().await?);
    leadership.unlock().await?;
    println!("released; leader now {:?}", elector.leader().await?);
    Ok(())
}
