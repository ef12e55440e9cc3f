//! Where leasehold keeps its keys in etcd, and what their values hold.
//!
//! Two layouts ([`Layout`]):
//!
//! **leasehold** (the default)
//!
//! * Key of one candidate: `<prefix>/<election, escaped>/<lease id as 16 hex digits>`.
//!   The election name is escaped (`%` as `%25`, `/` as `%2F`) so that the
//!   range of one election (`<prefix>/<escaped>/`) never contains the keys of
//!   another election whose name merely starts with the same text followed by
//!   `/` (elections `a` and `a/b`).
//! * Value: a JSON object `{"v":1,"id":"<candidate id>","value":"<base64>"}`,
//!   readable with `etcdctl get --prefix /leasehold/`.
//!
//! **go** (etcd's Go `concurrency.Election`, `etcdctl elect`)
//!
//! * Key of one candidate: `<prefix><election>/<lease id in lowercase hex,
//!   unpadded>`, both taken verbatim (Go's `NewElection(session, pfx)` with
//!   `pfx` = prefix + election writes `fmt.Sprintf("%s/%x", pfx, lease)`).
//!   The prefix is empty unless one is set.
//! * Value: the leader value itself, raw bytes. Any bytes read are a leader;
//!   the candidate id is not stored, so a leader read from the store is named
//!   by its key (`LeaderInfo::id` = the key, what `etcdctl elect` prints on
//!   its first line).

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use leasehold_core::{Error, FencingToken, LeaderInfo};
use serde::{Deserialize, Serialize};

/// How an etcd backend lays out its keys and values: leasehold's own, or
/// the one of etcd's Go `concurrency.Election` (and `etcdctl elect`), to
/// share elections with Go services. Ordering (lowest create revision
/// leads) and the fencing token (the leader key's create revision, Go's
/// `Election.Rev()`) are the same in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Layout {
    /// `<prefix>/<escaped election>/<lease, 16 hex digits>` holding a JSON
    /// record with the candidate id and the value (prefix default
    /// `/leasehold`).
    #[default]
    Leasehold,
    /// `<prefix><election>/<lease in hex>` holding the raw leader value,
    /// prefix and election verbatim (prefix default empty): the keys of Go's
    /// `concurrency.NewElection(session, prefix + election)` and of
    /// `etcdctl elect <prefix + election>`. Leaders read from the store are
    /// named by their key, as no candidate id is stored.
    Go,
}

impl Layout {
    /// The name used in URLs and config files: `leasehold` or `go`.
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Leasehold => "leasehold",
            Layout::Go => "go",
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Layout {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "leasehold" => Ok(Layout::Leasehold),
            "go" => Ok(Layout::Go),
            other => Err(Error::Config(format!(
                "unknown etcd layout {other:?}; use `leasehold` (the default) or `go` (etcd's Go concurrency.Election and etcdctl elect)"
            ))),
        }
    }
}

/// A layout with its prefix: turns election names and leases into keys,
/// and values into bytes and back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Keys {
    pub(crate) layout: Layout,
    /// Normalised for [`Layout::Leasehold`], verbatim for [`Layout::Go`].
    pub(crate) prefix: String,
}

impl Keys {
    /// `prefix` as the user gave it (`None`: the layout's default).
    pub(crate) fn new(layout: Layout, prefix: Option<&str>) -> Keys {
        let prefix = match layout {
            Layout::Leasehold => normalize_prefix(prefix.unwrap_or(crate::DEFAULT_PREFIX)),
            Layout::Go => prefix.unwrap_or_default().to_owned(),
        };
        Keys { layout, prefix }
    }

    /// The range holding every candidate key of `election`.
    pub(crate) fn range(&self, election: &str) -> String {
        match self.layout {
            Layout::Leasehold => election_prefix(&self.prefix, election),
            Layout::Go => format!("{}{election}/", self.prefix),
        }
    }

    /// The key a candidate holding lease `lease` owns in `election`.
    pub(crate) fn candidate(&self, election: &str, lease: i64) -> String {
        match self.layout {
            Layout::Leasehold => candidate_key(&self.prefix, election, lease),
            // Go's `%x` of the (positive) int64 lease id.
            Layout::Go => format!("{}{lease:x}", self.range(election)),
        }
    }

    /// The value a candidate writes.
    pub(crate) fn encode(&self, candidate: &str, value: &[u8]) -> Vec<u8> {
        match self.layout {
            Layout::Leasehold => encode(candidate, value),
            Layout::Go => value.to_vec(),
        }
    }

    /// The leader a key describes.
    ///
    /// # Errors
    /// [`Error::InvalidRecord`] naming the key: in the leasehold layout when
    /// the bytes are not a record leasehold wrote; in both, for a create
    /// revision that is not positive.
    pub(crate) fn decode(
        &self,
        key: &[u8],
        bytes: &[u8],
        create_revision: i64,
    ) -> Result<LeaderInfo, Error> {
        match self.layout {
            Layout::Leasehold => decode(key, bytes, create_revision),
            Layout::Go => Ok(LeaderInfo {
                id: String::from_utf8_lossy(key).into_owned(),
                value: bytes.to_vec(),
                token: token(key, create_revision)?,
            }),
        }
    }
}

fn invalid(key: &[u8], message: String) -> Error {
    Error::InvalidRecord {
        backend: "etcd",
        path: String::from_utf8_lossy(key).into_owned(),
        message,
    }
}

fn token(key: &[u8], create_revision: i64) -> Result<FencingToken, Error> {
    u64::try_from(create_revision)
        .ok()
        .filter(|t| *t > 0)
        .map(FencingToken)
        .ok_or_else(|| {
            invalid(
                key,
                format!("create revision {create_revision} is not positive"),
            )
        })
}

/// The version written in every record; a record with another is refused.
const RECORD_VERSION: u32 = 1;

/// Normalises a user-given prefix: no trailing `/`, one leading `/` kept as given.
pub(crate) fn normalize_prefix(prefix: &str) -> String {
    prefix.trim_end_matches('/').to_owned()
}

/// `<prefix>/<escaped election>/`: the range holding every candidate of `election`.
pub(crate) fn election_prefix(prefix: &str, election: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + election.len() + 2);
    out.push_str(prefix);
    out.push('/');
    for c in election.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            c => out.push(c),
        }
    }
    out.push('/');
    out
}

/// The key a candidate holding lease `lease` owns in `election`.
pub(crate) fn candidate_key(prefix: &str, election: &str, lease: i64) -> String {
    // Lease ids are positive in etcd; format the bits so a negative id (which
    // etcd never hands out) still gives a distinct, fixed-width key.
    format!("{}{:016x}", election_prefix(prefix, election), lease as u64)
}

/// The record stored as the value of a candidate key.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    v: u32,
    id: String,
    value: String,
}

/// Encodes a candidate's id and leader value.
pub(crate) fn encode(candidate: &str, value: &[u8]) -> Vec<u8> {
    let record = Record {
        v: RECORD_VERSION,
        id: candidate.to_owned(),
        value: BASE64.encode(value),
    };
    // Serialising a struct of strings and a number cannot fail.
    serde_json::to_vec(&record).unwrap_or_default()
}

/// Decodes the record at `key` into the leader it describes, with `token`
/// (the key's create revision) as fencing token.
///
/// # Errors
/// [`Error::InvalidRecord`] naming the key when the bytes are not a record
/// leasehold wrote.
pub(crate) fn decode(key: &[u8], bytes: &[u8], create_revision: i64) -> Result<LeaderInfo, Error> {
    let bad = |message: String| invalid(key, message);
    let record: Record = serde_json::from_slice(bytes).map_err(|e| {
        bad(format!(
            "not a leasehold record ({e}); delete the key if it is stray, or use another key prefix"
        ))
    })?;
    if record.v != RECORD_VERSION {
        return Err(bad(format!(
            "record version {} is not the supported version {RECORD_VERSION}; upgrade leasehold",
            record.v
        )));
    }
    let value = BASE64
        .decode(record.value.as_bytes())
        .map_err(|e| bad(format!("the value is not base64: {e}")))?;
    Ok(LeaderInfo {
        id: record.id,
        value,
        token: token(key, create_revision)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_nested_names_do_not_overlap() {
        let a = election_prefix("/lh", "a");
        let ab = election_prefix("/lh", "a/b");
        assert_eq!(a, "/lh/a/");
        assert_eq!(ab, "/lh/a%2Fb/");
        assert!(!ab.starts_with(&a));
        assert_eq!(election_prefix("/lh", "50%"), "/lh/50%25/");
        assert_eq!(
            candidate_key("/lh", "a", 0x1234),
            "/lh/a/0000000000001234".to_owned()
        );
        assert_eq!(normalize_prefix("/lh//"), "/lh");
    }

    #[test]
    fn records_round_trip() {
        let bytes = encode("node-1", b"\x00\xffaddr");
        let info = decode(b"k", &bytes, 42).unwrap();
        assert_eq!(info.id, "node-1");
        assert_eq!(info.value, b"\x00\xffaddr");
        assert_eq!(info.token, FencingToken(42));
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("\"id\":\"node-1\""), "{text}");
    }

    #[test]
    fn foreign_data_is_refused_with_the_key() {
        for bad in [
            &b"hello"[..],
            br#"{"v":2,"id":"x","value":""}"#,
            br#"{"v":1,"id":"x","value":"***"}"#,
        ] {
            match decode(b"/lh/a/01", bad, 3) {
                Err(Error::InvalidRecord { path, .. }) => assert_eq!(path, "/lh/a/01"),
                other => panic!("expected InvalidRecord, got {other:?}"),
            }
        }
        assert!(decode(b"k", &encode("x", b""), 0).is_err());
    }

    #[test]
    fn go_keys_are_verbatim_with_unpadded_hex_leases() {
        let go = Keys::new(Layout::Go, None);
        assert_eq!(go.range("billing"), "billing/");
        assert_eq!(
            go.candidate("billing", 0x694d_7a1b_2c3d),
            "billing/694d7a1b2c3d"
        );
        assert_eq!(go.candidate("a/b", 0x1f), "a/b/1f");
        let go = Keys::new(Layout::Go, Some("/election/"));
        assert_eq!(go.range("billing"), "/election/billing/");
        let own = Keys::new(Layout::Leasehold, None);
        assert_eq!(own.range("a/b"), "/leasehold/a%2Fb/");
        assert_eq!(own.candidate("a", 0x1f), "/leasehold/a/000000000000001f");
    }

    #[test]
    fn go_values_are_raw_bytes_and_any_bytes_are_a_leader() {
        let go = Keys::new(Layout::Go, None);
        assert_eq!(go.encode("ignored", b"\x00addr"), b"\x00addr".to_vec());
        for bytes in [
            &b"go-1"[..],
            b"",
            b"\xff\xfe",
            br#"{"v":1,"id":"x","value":""}"#,
        ] {
            let info = go.decode(b"billing/1f", bytes, 7).unwrap();
            assert_eq!(info.id, "billing/1f");
            assert_eq!(info.value, bytes);
            assert_eq!(info.token, FencingToken(7));
        }
        assert!(go.decode(b"billing/1f", b"x", 0).is_err());
    }

    #[test]
    fn layout_names_round_trip() {
        for layout in [Layout::Leasehold, Layout::Go] {
            assert_eq!(layout.as_str().parse::<Layout>().unwrap(), layout);
        }
        let err = "golang".parse::<Layout>().unwrap_err();
        assert!(err.to_string().contains("`go`"), "{err}");
    }
}
