//! The chaos suite (src/bin/chaos): many `leasehold run` processes, real
//! faults (SIGKILL, SIGSTOP, network partitions in namespaces, store
//! restarts, a lease object or row deleted by hand), a fenced register and a checker over
//! the whole history. See docs/safety.md.
//!
//! Needs root (network namespaces), the stores from `scripts/setup`, and the
//! `leasehold` binary next to the `chaos` binary (`cargo test --workspace
//! --all-targets` builds both; alone: `cargo build -p leasehold-cli`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};

/// The two tests run one after the other: each is a timed fault run on real
/// stores, and the broken build's compilation must not slow quick mode.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn chaos() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chaos"));
    // The table and the progress lines go straight to the test's own stdout
    // and stderr: visible in the CI log with or without --nocapture.
    cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit());
    cmd
}

fn leasehold_cli() -> PathBuf {
    let cli = Path::new(env!("CARGO_BIN_EXE_chaos")).with_file_name("leasehold");
    assert!(
        cli.is_file(),
        "{} is missing: build it with `cargo build -p leasehold-cli` (cargo test --workspace --all-targets does)",
        cli.display()
    );
    cli
}

/// Fixed seeds, etcd (a 3-member cluster), ZooKeeper (a 3-member
/// ensemble), Cloud Storage, PostgreSQL and MariaDB, a few minutes in all:
/// the checker must find no violation.
#[test]
fn quick_mode_keeps_every_promise_on_every_backend() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let cli = leasehold_cli();
    let status = chaos()
        .arg("quick")
        .arg("--cli")
        .arg(&cli)
        .status()
        .expect("run the chaos binary");
    assert!(
        status.success(),
        "the chaos suite failed ({status}): the table and the VIOLATION lines are above; exit status 1 = a violation, 2 = the run itself failed"
    );
}

/// The `leasehold` CLI with the engine's test-only breakage compiled in
/// (`--cfg leasehold_unsafe_no_deadline`: leaders never step down on their
/// own clock while the variable LEASEHOLD_UNSAFE_NO_DEADLINE is set), built
/// with etcd only into a target directory of its own, so that no other
/// build ever has it. scripts/test builds it before the tests; here it is
/// brought up to date (a no-op then) or built.
fn broken_cli() -> PathBuf {
    let root = leasehold_integration_tests::workspace_root();
    let target = root.join("target").join("unsafe-no-deadline");
    let status = Command::new(env!("CARGO"))
        .current_dir(root)
        .args([
            "build",
            "--locked",
            "-p",
            "leasehold-cli",
            "--no-default-features",
        ])
        .args(["--features", "leasehold/etcd", "--target-dir"])
        .arg(&target)
        .env("RUSTFLAGS", "--cfg leasehold_unsafe_no_deadline")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .expect("run cargo to build the broken leasehold CLI");
    assert!(
        status.success(),
        "building the broken CLI failed ({status}): RUSTFLAGS=\"--cfg leasehold_unsafe_no_deadline\" cargo build -p leasehold-cli --no-default-features --features leasehold/etcd --target-dir target/unsafe-no-deadline"
    );
    let cli = target.join("debug").join("leasehold");
    assert!(
        cli.is_file(),
        "{} is missing after the build",
        cli.display()
    );
    cli
}

/// The checker can fail: a CLI whose leaders never step down on their own
/// clock ([`broken_cli`], switched on by the variable the runner sets with
/// `--unsafe-no-deadline`), with its store link cut, keeps its worker
/// writing while a newer leader writes too.
#[test]
fn a_leader_without_its_step_down_deadline_fails_the_checker() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let broken = broken_cli();
    let out = chaos()
        .args([
            "soak",
            "--backend",
            "etcd",
            "--seed",
            "21",
            "--seconds",
            "25",
        ])
        .args(["--faults", "cut-leader,drop-leader-out"])
        .arg("--unsafe-no-deadline")
        .arg("--cli")
        .arg(&broken)
        .stdout(Stdio::piped())
        .output()
        .expect("run the chaos binary");
    let table = String::from_utf8_lossy(&out.stdout);
    println!("{table}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "the checker should have reported a violation (exit 1):\n{table}"
    );
    assert!(
        table.contains("two leaders acting"),
        "the violation should be two leaders acting:\n{table}"
    );
}
