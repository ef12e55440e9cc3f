//! The conformance suite on both kinds of in-memory store, under paused time.

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::conformance::async_trait;
use leasehold_core::conformance::{self, Subject};
use leasehold_core::memory::MemoryStore;
use leasehold_core::{Backend, ElectionOptions};

struct Memory(MemoryStore);

#[async_trait]
impl Subject for Memory {
    async fn client(&self) -> Arc<dyn Backend> {
        Arc::new(self.0.client())
    }
    fn options(&self, election: &str, candidate: &str) -> ElectionOptions {
        ElectionOptions::new(election, candidate).with_ttl(Duration::from_secs(3))
    }
    fn slack(&self) -> Duration {
        Duration::from_millis(200)
    }
    async fn delete_by_hand(&self, election: &str) {
        assert!(
            self.0.delete_by_hand(election),
            "nothing to delete in {election}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn queue_store_passes_the_suite() {
    conformance::run_all(&Memory(MemoryStore::new())).await;
}

#[tokio::test(start_paused = true)]
async fn polling_store_passes_the_suite() {
    conformance::run_all(&Memory(MemoryStore::polling())).await;
}

#[tokio::test(start_paused = true)]
async fn hundred_candidates_one_leader_at_a_time() {
    conformance::racing_candidates_one_wins(&Memory(MemoryStore::new()), 100).await;
    conformance::racing_candidates_one_wins(&Memory(MemoryStore::polling()), 100).await;
}
