//! A service that leads with `Elector::run`: it campaigns, works while it
//! leads, campaigns again after a loss, and on Ctrl-C (or SIGTERM) stops its
//! work before it releases the lease, so the next replica takes over at once
//! and never overlaps with it.
//!
//! Run: `cargo run --example graceful -- [STORE_URL]` (default
//! `memory://graceful-demo?ttl=3s`), then press Ctrl-C. Start it twice
//! against a real store (`cargo run --features full --example graceful --
//! etcd://127.0.0.1:2379/graceful-demo`) and
//! stop the leader to watch the handover.

use std::time::Duration;

use leasehold::{CancellationToken, Leadership};

async fn work(leadership: Leadership) {
    let token = leadership.fencing_token();
    println!("leading (token {token}); working until told to stop");
    let done = leadership.cancellation_token();
    let mut batches = 0u64;
    loop {
        tokio::select! {
            _ = done.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                batches += 1;
                println!("  batch {batches} written with token {token}");
            }
        }
    }
    // Finish or roll back what is in flight; the lease is still ours.
    println!(
        "stopping after {batches} batches ({})",
        leadership
            .loss_reason()
            .map_or_else(|| "stopped".to_owned(), |r| r.to_string())
    );
}

#[tokio::main]
async fn main() -> leasehold::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://graceful-demo?ttl=3s".to_owned());
    let elector = leasehold::connect(&url).await?;
    println!(
        "candidate {} in election {:?}; Ctrl-C to stop",
        elector.options().candidate_id,
        elector.options().election
    );
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        println!("shutdown requested");
        s.cancel();
    });
    elector.run(shutdown, work).await?;
    println!("released; bye");
    Ok(())
}
