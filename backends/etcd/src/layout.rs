//! Where leasehold keeps its keys in etcd, and what their values hold.
//!
//! * Key of one candidate: `<prefix>/<election, escaped>/<lease id as 16 hex digits>`.
//!   The election name is escaped (`%` as `%25`, `/` as `%2F`) so that the
//!   range of one election (`<prefix>/<escaped>/`) never contains the keys of
//!   another election whose name merely starts with the same text followed by
//!   `/` (elections `a` and `a/b`).
//! * Value: a JSON object `{"v":1,"id":"<candidate id>","value":"<base64>"}`,
//!   readable with `etcdctl get --prefix /leasehold/`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use leasehold_core::{Error, FencingToken, LeaderInfo};
use serde::{Deserialize, Serialize};

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
    let bad = |message: String| Error::InvalidRecord {
        backend: "etcd",
        path: String::from_utf8_lossy(key).into_owned(),
        message,
    };
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
    let token = u64::try_from(create_revision)
        .ok()
        .filter(|t| *t > 0)
        .ok_or_else(|| bad(format!("create revision {create_revision} is not positive")))?;
    Ok(LeaderInfo {
        id: record.id,
        value,
        token: FencingToken(token),
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
}
