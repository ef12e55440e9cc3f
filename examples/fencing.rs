//! Why fencing tokens: a leader that stalls (a long GC pause, a frozen VM)
//! can wake up still believing it leads. The resource it writes to keeps the
//! highest token it has seen and rejects older ones, so the stale write
//! bounces instead of corrupting data.
//!
//! Run: `cargo run --example fencing`

use std::sync::{Arc, Mutex};
use std::time::Duration;

use leasehold::faulty::{Fault, FaultyBackend};
use leasehold::memory::MemoryStore;
use leasehold::{ElectionOptions, Elector, FencingToken};

/// A storage service that honours fencing tokens.
#[derive(Default)]
struct FencedStore {
    highest: Mutex<FencingToken>,
    log: Mutex<Vec<String>>,
}

impl FencedStore {
    fn write(&self, token: FencingToken, what: &str) -> Result<(), String> {
        let mut highest = self.highest.lock().unwrap_or_else(|e| e.into_inner());
        if token < *highest {
            return Err(format!(
                "rejected {what:?}: token {token} is older than {}",
                *highest
            ));
        }
        *highest = token;
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("{what} (token {token})"));
        Ok(())
    }
}

#[tokio::main]
async fn main() -> leasehold::Result<()> {
    let ttl = Duration::from_secs(2);
    let store = MemoryStore::new();
    let resource = Arc::new(FencedStore::default());

    let (stalling, faults) = FaultyBackend::wrap(Arc::new(store.client()));
    let a = Elector::new(stalling, ElectionOptions::new("ledger", "a").with_ttl(ttl))?;
    let b = Elector::new(
        Arc::new(store.client()),
        ElectionOptions::new("ledger", "b").with_ttl(ttl),
    )?;

    let la = a.lock().await?;
    let token_a = la.fencing_token();
    println!("a leads with token {token_a}");
    resource
        .write(token_a, "a: entry 1")
        .map_err(leasehold::Error::Config)?;

    // a's process freezes: its heartbeat cannot reach the store, and the
    // code below stands for work a started before the freeze and finishes
    // after it, without looking at its done signal (the bug fencing guards
    // against).
    faults.set(Fault::Pause);
    let lb = b.lock().await?;
    println!(
        "b leads with token {} (a's lease expired; a's done signal fired: {})",
        lb.fencing_token(),
        la.is_lost()
    );
    resource
        .write(lb.fencing_token(), "b: entry 2")
        .map_err(leasehold::Error::Config)?;

    // a wakes up and writes with its old token: the resource refuses.
    match resource.write(token_a, "a: late entry") {
        Ok(()) => println!("BUG: the stale write was accepted"),
        Err(e) => println!("the resource {e}"),
    }
    faults.set(Fault::None);
    lb.unlock().await?;
    println!(
        "log: {:?}",
        resource.log.lock().unwrap_or_else(|e| e.into_inner())
    );
    Ok(())
}
