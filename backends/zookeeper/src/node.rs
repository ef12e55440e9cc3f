//! Znode layout and data encoding: pure functions, no I/O.
//!
//! Layout (inside the client's chroot):
//!
//! ```text
//! /<election>                                   container node (ZooKeeper deletes it once empty)
//! /<election>/_c_<uuid>-<lock name><10 digits>  one ephemeral sequential node per candidate
//! ```
//!
//! The node names follow Apache Curator: "protected" names (`_c_<uuid>-`)
//! and a lock name, `latch-` ([`LockName::Latch`], `LeaderLatch`, the
//! default) or `lock-` ([`LockName::Lock`], `LeaderSelector` and
//! `InterProcessMutex`). The line is sorted exactly as Curator's
//! `StandardLockInternalsDriver.fixForSorting` sorts it: by the text after
//! the last occurrence of the lock name, compared as strings (the server
//! writes the sequence as `%010d`). So Curator participants and leasehold
//! candidates on the same path agree on who is first.
//!
//! A child whose name does not end in `<lock name><sequence>` is an error
//! ([`Error::InvalidRecord`]), never skipped: Curator sorts such a name by
//! its whole text, so it would disagree with leasehold about who leads.
//!
//! Node data: the candidate id (UTF-8), then, when the leader value is not
//! empty, one NUL byte and the value bytes. Without a value the data is
//! exactly the id, as Curator writes a participant id, so Curator's
//! `getLeader().getId()` shows the leasehold candidate id; with a value it
//! shows `id + "\0" + value`. A node whose data has no NUL (such as a
//! Curator participant's, whose data is its id) reads as that id with an
//! empty value. Candidate ids never contain NUL (control characters are
//! refused by `ElectionOptions::validate`), so the encoding is unambiguous.

use std::fmt;
use std::str::FromStr;

use leasehold_core::Error;

/// The lock name in candidate node names: which Apache Curator recipe
/// leasehold shares an election path with. Curator's recipes differ here
/// and sort everything else after their own nodes, so every participant of
/// one path (leasehold and Curator alike) must use the same one.
///
/// ```
/// use leasehold_zookeeper::LockName;
///
/// assert_eq!("lock-".parse::<LockName>().unwrap(), LockName::Lock);
/// assert_eq!(LockName::default().as_str(), "latch-");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LockName {
    /// `latch-`: Curator's `LeaderLatch` (the default).
    #[default]
    Latch,
    /// `lock-`: Curator's `LeaderSelector` and `InterProcessMutex`.
    Lock,
}

impl LockName {
    /// The text in node names: `latch-` or `lock-`.
    pub fn as_str(self) -> &'static str {
        match self {
            LockName::Latch => "latch-",
            LockName::Lock => "lock-",
        }
    }

    /// The Curator recipes that use this lock name.
    fn recipes(self) -> &'static str {
        match self {
            LockName::Latch => "Curator's LeaderLatch",
            LockName::Lock => "Curator's LeaderSelector or InterProcessMutex",
        }
    }

    fn other(self) -> LockName {
        match self {
            LockName::Latch => LockName::Lock,
            LockName::Lock => LockName::Latch,
        }
    }
}

impl fmt::Display for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LockName {
    type Err = Error;

    /// `latch-` or `lock-` (the trailing `-` may be left out).
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "latch-" | "latch" => Ok(LockName::Latch),
            "lock-" | "lock" => Ok(LockName::Lock),
            other => Err(Error::invalid_option(
                "lock_name",
                format!(
                    "{other:?} is not a lock name; use `latch-` (Curator's LeaderLatch, the default) or `lock-` (Curator's LeaderSelector and InterProcessMutex)"
                ),
            )),
        }
    }
}

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
pub(crate) fn node_prefix(dir: &str, protect: &str, lock: LockName) -> String {
    format!("{dir}/_c_{protect}-{lock}")
}

/// Curator's sort key of a child (`StandardLockInternalsDriver.fixForSorting`):
/// the text after the last occurrence of the lock name. `None` unless that
/// text is a sequence as the server writes it (`%010d` of a signed 32-bit
/// counter), i.e. unless the child is a candidate node under this lock name.
pub(crate) fn sort_key(name: &str, lock: LockName) -> Option<&str> {
    let at = name.rfind(lock.as_str())?;
    let sequence = &name[at + lock.as_str().len()..];
    let digits = sequence.strip_prefix('-').unwrap_or(sequence);
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(sequence)
}

/// The election's participants, first (the leader) first, sorted as Curator
/// sorts them: by [`sort_key`], compared as text (Java's `String.compareTo`,
/// which for these ASCII keys is byte order).
///
/// # Errors
/// [`Error::InvalidRecord`] naming `path` (the election directory as the
/// server knows it) and the first child that is not a candidate node under
/// `lock`, and saying what to do: Curator would sort that child by its whole
/// name and so disagree with leasehold about who leads.
pub(crate) fn sorted_candidates(
    children: Vec<String>,
    lock: LockName,
    path: &str,
) -> Result<Vec<String>, Error> {
    if let Some(foreign) = children.iter().find(|n| sort_key(n, lock).is_none()) {
        return Err(foreign_node(path, foreign, lock));
    }
    let mut line = children;
    line.sort_by(|a, b| sort_key(a, lock).cmp(&sort_key(b, lock)));
    Ok(line)
}

fn foreign_node(path: &str, foreign: &str, lock: LockName) -> Error {
    let other = lock.other();
    let advice = if sort_key(foreign, other).is_some() {
        format!(
            "it is a `{other}` candidate node, as {} creates; set lock_name={other} (ZkBackendBuilder::lock_name, or the URL / config option `lock_name`) on every leasehold candidate of this election, and never mix {} with {} on one path",
            other.recipes(),
            other.recipes(),
            lock.recipes()
        )
    } else {
        format!(
            "remove it, or elect on a path that holds only `{lock}` candidate nodes (nested elections, such as `a` and `a/b`, share a path)"
        )
    };
    Error::InvalidRecord {
        backend: crate::backend::NAME,
        path: path.to_owned(),
        message: format!(
            "the election holds {foreign:?}, which is not a candidate node under this backend's lock_name `{lock}` ({}): leasehold and Curator would not agree on who leads, so leasehold refuses the election; {advice}",
            lock.recipes()
        ),
    }
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
    fn sort_keys_and_sorting() {
        let latch = LockName::Latch;
        let lock = LockName::Lock;
        assert_eq!(
            sort_key("_c_1234-latch-0000000042", latch),
            Some("0000000042")
        );
        assert_eq!(sort_key("latch-0000000001", latch), Some("0000000001"));
        assert_eq!(sort_key("_c_x-lock-0000000001", lock), Some("0000000001"));
        // The counter is a signed int: after 2^31 creates the server writes
        // a minus sign, and Curator sorts by the text.
        assert_eq!(sort_key("_c_x-lock--000000001", lock), Some("-000000001"));
        assert_eq!(sort_key("_c_x-lock-0000000001", latch), None);
        assert_eq!(sort_key("_c_x-latch-0000000001", lock), None);
        assert_eq!(sort_key("_c_x-latch-", latch), None);
        assert_eq!(sort_key("_c_x-latch-12a", latch), None);
        assert_eq!(sort_key("b", latch), None);
        let sorted = sorted_candidates(
            vec![
                "_c_b-latch-0000000010".into(),
                "_c_a-latch-0000000002".into(),
                "latch-0000000007".into(),
            ],
            latch,
            "/e",
        )
        .unwrap();
        assert_eq!(
            sorted,
            [
                "_c_a-latch-0000000002",
                "latch-0000000007",
                "_c_b-latch-0000000010"
            ]
        );
        // Text order, as Curator: a wrapped (negative) counter sorts first.
        let sorted = sorted_candidates(
            vec!["lock-2147483647".into(), "_c_z-lock--2147483648".into()],
            lock,
            "/e",
        )
        .unwrap();
        assert_eq!(sorted, ["_c_z-lock--2147483648", "lock-2147483647"]);
        assert_eq!(
            base_name("/e/_c_a-latch-0000000002"),
            "_c_a-latch-0000000002"
        );
        assert_eq!(node_prefix("/e", "u", latch), "/e/_c_u-latch-");
        assert_eq!(node_prefix("/e", "u", lock), "/e/_c_u-lock-");
    }

    #[test]
    fn foreign_children_are_errors_that_say_what_to_do() {
        let err = sorted_candidates(
            vec![
                "_c_a-latch-0000000002".into(),
                "_c_j-lock-0000000001".into(),
            ],
            LockName::Latch,
            "/app/e",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(&err, Error::InvalidRecord { path, .. } if path == "/app/e")
                && !err.is_transient()
                && text.contains("_c_j-lock-0000000001")
                && text.contains("lock_name=lock-"),
            "{text}"
        );
        let err = sorted_candidates(vec!["nested".into()], LockName::Lock, "/e").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("\"nested\"") && text.contains("lock_name `lock-`"),
            "{text}"
        );
        assert_eq!(
            sorted_candidates(vec![], LockName::Lock, "/e").unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn lock_names_parse() {
        assert_eq!("latch-".parse::<LockName>().unwrap(), LockName::Latch);
        assert_eq!("latch".parse::<LockName>().unwrap(), LockName::Latch);
        assert_eq!("lock".parse::<LockName>().unwrap(), LockName::Lock);
        assert_eq!(LockName::Lock.to_string(), "lock-");
        assert!(matches!(
            "mutex".parse::<LockName>(),
            Err(Error::InvalidOption {
                field: "lock_name",
                ..
            })
        ));
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
