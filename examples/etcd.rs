//! The etcd backend built in code (rather than from a URL): win the election,
//! show the fencing token and what the store says, hand over.
//!
//! Run: `docker compose up -d etcd && cargo run --features etcd --example etcd -- [http://127.0.0.1:2379]`

use std::sync::Arc;
use std::time::Duration;

use leasehold::{ElectionOptions, Elector};

#[tokio::main]
async fn main() -> leasehold::Result<()> {
    let endpoint = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:2379".to_owned());
    let backend = leasehold::etcd::EtcdBackend::builder()
        .endpoints([endpoint.as_str()])
        .build()
        .await?;
    let options = ElectionOptions::new("example-etcd", format!("example-{}", std::process::id()))
        .with_ttl(Duration::from_secs(5));
    let elector = Elector::new(Arc::new(backend), options)?;
    let leadership = elector.lock().await?;
    println!("leading with fencing token {}", leadership.fencing_token());
    println!("the store says the leader is {:?}", elector.leader().await?);
    leadership.unlock().await?;
    println!("released; leader now {:?}", elector.leader().await?);
    Ok(())
}
