//! One program, any store: the store is chosen by configuration alone.
//!
//! Run: `cargo run --features full --example config_switch -- examples/leasehold.toml`
//! or:  `LEASEHOLD_URL=etcd://127.0.0.1:2379/demo cargo run --features etcd --example config_switch`
//!
//! It reads an [`ElectionConfig`] from the TOML file given as the first
//! argument (if any), applies the `LEASEHOLD_*` environment variables, wins
//! the election, prints one JSON line with the store kind, leader and token,
//! and hands over. Switching from etcd to ZooKeeper to Cloud Storage is a
//! change of `url` (or of the `[store]` section), not of code.

use leasehold::ElectionConfig;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("config_switch: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> leasehold::Result<()> {
    let config = match std::env::args().nth(1) {
        Some(path) => ElectionConfig::from_file(path)?,
        None => ElectionConfig::default(),
    }
    .with_env();
    let (store, _) = config.resolve()?;
    let elector = config.connect().await?;
    let leadership = match elector.lock_timeout(elector.options().ttl * 3).await? {
        Some(l) => l,
        None => {
            return Err(leasehold::Error::Config(format!(
                "could not lead within 3 ttls; the leader is {:?}",
                elector.leader().await?
            )));
        }
    };
    let seen = elector.leader().await?;
    let line = serde_json::json!({
        "store": store.kind(),
        "election": elector.options().election,
        "leader": leadership.leader().id,
        "token": leadership.fencing_token().get(),
        "store_agrees": seen.is_some_and(|l| l.token == leadership.fencing_token()),
    });
    println!("{line}");
    leadership.unlock().await
}
