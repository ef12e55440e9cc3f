//! The zookeeper backend built in code (rather than from a URL): win the election,
//! show the fencing token and what the store says, hand over.
//!
//! Run: `docker compose up -d zookeeper && cargo run --features zookeeper --example zookeeper -- [127.0.0.1:2181[/existing-chroot]]`

use std::sync::Arc;
use std::time::Duration;

use leasehold::{ElectionOptions, Elector};

#[tokio::main]
async fn main() -> leasehold::Result<()> {
    let endpoint = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:2181".to_owned());
    let options = ElectionOptions::new(
        "example-zookeeper",
        format!("example-{}", std::process::id()),
    )
    .with_ttl(Duration::from_secs(5));
    // The session must cover ttl - safety_margin + renew_interval (6.17 s).
    let backend = leasehold::zookeeper::ZkBackend::builder()
        .connect_string(endpoint.as_str())
        .session_timeout(leasehold::zookeeper::ZkBackend::min_session_timeout(
            &options,
        ))
        .build()
        .await?;
    let elector = Elector::new(Arc::new(backend), options)?;
    let leadership = elector.lock().await?;
    println!("leading with fencing token {}", leadership.fencing_token());
    println!("the store says the leader is {:?}", elector.leader().await?);
    leadership.unlock().await?;
    println!("released; leader now {:?}", elector.leader().await?);
    Ok(())
}
