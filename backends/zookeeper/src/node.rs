//! Znode layout and data encoding: pure functions, no I/O.
//!
//! Layout (inside the client's chroot):
//!
//! ```text
//! /<election>                                 container node (ZooKeeper deletes it once empty)
//! /<election>/_c_<uuid>-latch-<10 digits>     one ephemeral sequential node per candidate
//! ```
//!
//! The node names follow Apache Curator's `LeaderLatch` ("protected" names
//! `_c_<uuid>-` and the lock name `latch-`), so Curator latches and leasehold
//! candidates on the same path queue behind each other by sequence number.
//!
//! Node data: the candidate id (UTF-8), then, when the leader value is not
//! empty, one NUL byte and the value bytes. A node whose data has no NUL (such
//! as a Curator participant's, whose data is its id) reads as that id with an
//! empty value. Candidate ids never contain NUL (control characters are
//! refused by `ElectionOptions::validate`), so the encoding is unambiguous.

use leasehold_core::Error;

/// The lock name Curator's `LeaderLatch` uses; the sequence follows it.
pub(crate) const LOCK_NAME: &str = "latch-";

/// The znode path (inside the chroot) of an election's directory.
///
/// # Errors
/// [`Error::InvalidOption`] on `election` when ZooKeeper would refuse the
/// path (an empty, `.` or `..` component, a character ZooKeeper forbids), or
/// when it would land on the reserved `/zookeeper` tree.
pub(crate) fn election_dir(election: &str, chroot_is_root: bool) -> Result<String, Error> {
    if let Some(problem) = path_problem(election) {
        return Err(Error::invalid_option(
            "election",
            format!("{election:?} {problem}"),
        ));
    }
    if chroot_is_root && election.split('/').next() == Some("zookeeper") {
        return Err(Error::invalid_option(
            "election",
            format!(
                "{election:?} would live under `/zookeeper`, ZooKeeper's reserved tree; pick another name or use a chroot"
            ),
        ));
    }
    Ok(format!("/{election}"))
}

/// Why ZooKeeper would refuse `/<relative>` as a path, if it would.
pub(crate) fn path_problem(relative: &str) -> Option<String> {
    if relative.is_empty() {
        return Some("must not be empty".into());
    }
    for component in relative.split('/') {
        match component {
            "" => {
                return Some(
                    "has an empty path component (`//` or a `/` at either end); ZooKeeper refuses such paths"
                        .into(),
                );
            }
            "." | ".." => {
                return Some(format!(
                    "has a `{component}` path component, which ZooKeeper refuses"
                ));
            }
            _ => {}
        }
    }
    relative.chars().find(|&c| forbidden_char(c)).map(|c| {
        format!(
            "contains the character {c:?} (U+{:04X}), which ZooKeeper does not allow in a path",
            c as u32
        )
    })
}

/// Characters ZooKeeper's `PathUtils.validatePath` refuses (Java chars, so
/// everything beyond the BMP, which Java encodes as surrogates, too).
fn forbidden_char(c: char) -> bool {
    let c = c as u32;
    c == 0
        || (0x01..=0x1f).contains(&c)
        || (0x7f..=0x9f).contains(&c)
        || (0xd800..=0xf8ff).contains(&c)
        || c >= 0xfff0
}

/// The path prefix for a new candidate node: the server appends the sequence.
pub(crate) fn node_prefix(dir: &str, protect: &str) -> String {
    format!("{dir}/_c_{protect}-{LOCK_NAME}")
}

/// The sequence number of a child name that takes part in the election
/// (`...latch-<digits>`), or `None` for anything else, which is ignored.
pub(crate) fn sequence_of(name: &str) -> Option<i64> {
    let at = name.rfind(LOCK_NAME)?;
    let digits = &name[at + LOCK_NAME.len()..];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The election's participants, lowest sequence (the leader) first.
pub(crate) fn sorted_candidates(children: Vec<String>) -> Vec<(i64, String)> {
    let mut v: Vec<(i64, String)> = children
        .into_iter()
        .filter_map(|name| sequence_of(&name).map(|s| (s, name)))
        .collect();
    v.sort();
    v
}

/// The last component of a path.
pub(crate) fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Node data for a candidate.
pub(crate) fn encode(candidate: &str, value: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(candidate.len() + 1 + value.len());
    data.extend_from_slice(candidate.as_bytes());
    if !value.is_empty() {
        data.push(0);
        data.extend_from_slice(value);
    }
    data
}

/// Candidate id and value from node data. Never fails: data from another
/// program is read as an id (invalid UTF-8 replaced) with an empty value.
pub(crate) fn decode(data: &[u8]) -> (String, Vec<u8>) {
    match data.iter().position(|&b| b == 0) {
        Some(i) => (
            String::from_utf8_lossy(&data[..i]).into_owned(),
            data[i + 1..].to_vec(),
        ),
        None => (String::from_utf8_lossy(data).into_owned(), Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn election_paths() {
        assert_eq!(election_dir("orders", true).unwrap(), "/orders");
        assert_eq!(election_dir("a/b", true).unwrap(), "/a/b");
        assert_eq!(election_dir("zookeeper", false).unwrap(), "/zookeeper");
        for bad in [
            "",
            "a//b",
            "./x",
            "a/..",
            "zookeeper",
            "zookeeper/x",
            "a\u{1}",
            "a\u{ffff}",
            "emoji\u{1F600}",
        ] {
            let err = election_dir(bad, true).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidOption {
                        field: "election",
                        ..
                    }
                ),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn sequences_and_sorting() {
        assert_eq!(sequence_of("_c_1234-latch-0000000042"), Some(42));
        assert_eq!(sequence_of("latch-0000000001"), Some(1));
        assert_eq!(sequence_of("_c_x-lock-0000000001"), None);
        assert_eq!(sequence_of("_c_x-latch-"), None);
        assert_eq!(sequence_of("_c_x-latch-12a"), None);
        assert_eq!(sequence_of("_c_x-latch-99999999999999999999999"), None);
        let sorted = sorted_candidates(vec![
            "_c_b-latch-0000000010".into(),
            "junk".into(),
            "_c_a-latch-0000000002".into(),
            "_c_c-latch-0000000007".into(),
        ]);
        let names: Vec<_> = sorted.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "_c_a-latch-0000000002",
                "_c_c-latch-0000000007",
                "_c_b-latch-0000000010"
            ]
        );
        assert_eq!(
            base_name("/e/_c_a-latch-0000000002"),
            "_c_a-latch-0000000002"
        );
        assert_eq!(node_prefix("/e", "u"), "/e/_c_u-latch-");
    }

    #[test]
    fn data_round_trips() {
        assert_eq!(
            decode(&encode("node-1", b"")),
            ("node-1".to_string(), vec![])
        );
        assert_eq!(
            decode(&encode("node-1", b"10.0.0.1:80\0\xff")),
            ("node-1".to_string(), b"10.0.0.1:80\0\xff".to_vec())
        );
        // A Curator participant: data is the id.
        assert_eq!(decode(b"curator-7"), ("curator-7".to_string(), vec![]));
        // Garbage never panics.
        assert_eq!(decode(b"\xff\xfe").0, "\u{fffd}\u{fffd}");
        assert_eq!(decode(b""), (String::new(), vec![]));
    }
}
