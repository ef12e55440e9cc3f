//! The lease record: the JSON document kept in one object per election.
//!
//! ```json
//! {"leasehold":"lease/v2","holder":"node-1","owner":"9f3c2a7d51e04b68","token":1767225600000123,
//!  "value":"10.0.0.7:8080","ttl_ms":15000,"released":false,
//!  "acquired_at_ms":1767225600000,"renewed_at_ms":1767225605000}
//! ```
//!
//! `owner` is the per-term random identity of the holder: only the candidate
//! that started the term knows it, so renewals and releases can tell their
//! own record from one that replaced it (even at an equal token, even from
//! a candidate with the same id). `token` is the fencing token of the term:
//! the object generation of the write that started it. That write cannot
//! know its own generation, so it leaves `token` out, and a record without
//! `token` means "the token is this object version's generation"; renewals
//! write it. A value that is not UTF-8 is kept base64-encoded in
//! `value_base64` instead of `value`. The timestamps are informational
//! (milliseconds since the Unix epoch, on the writer's clock): nobody makes
//! a decision on them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use leasehold_core::{FencingToken, LeaderInfo};
use serde::{Deserialize, Serialize};

/// The marker every record carries; anything else at the lease path is
/// somebody else's data.
pub(crate) const FORMAT: &str = "lease/v2";

/// The format of leasehold before records named their owner (term counters,
/// no owner): refused with a message saying what to do.
const OLD_FORMAT: &str = "lease/v1";

/// Largest object accepted as a lease record: a 64 KiB value, base64
/// encoded, plus a generous allowance for the other fields.
pub(crate) const MAX_RECORD_BYTES: usize = 96 * 1024 + 2 * 1024;

/// A decoded lease record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    /// The candidate id of the holder (of the last holder when released).
    pub(crate) holder: String,
    /// The per-term random identity of the holder (never 0).
    pub(crate) owner: u64,
    /// The term's fencing token; `None` in the term's first write, whose
    /// token is the generation of that object version.
    pub(crate) token: Option<u64>,
    /// The holder's published value.
    pub(crate) value: Vec<u8>,
    /// The holder's ttl (informational, and checked on takeover).
    pub(crate) ttl: Duration,
    /// The holder gave the election up; anybody may take it at once.
    pub(crate) released: bool,
    /// When the term started, on the holder's clock (informational).
    pub(crate) acquired_at_ms: u64,
    /// When the record was last written, on the writer's clock (informational).
    pub(crate) renewed_at_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    leasehold: String,
    holder: String,
    owner: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
    ttl_ms: u64,
    released: bool,
    #[serde(default)]
    acquired_at_ms: u64,
    #[serde(default)]
    renewed_at_ms: u64,
}

/// Milliseconds since the Unix epoch on this host's clock (0 if the clock is
/// before 1970). Informational only.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Record {
    /// Encode as JSON bytes.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let (value, value_base64) = match std::str::from_utf8(&self.value) {
            Ok(text) => (Some(text.to_owned()), None),
            Err(_) => (None, Some(BASE64.encode(&self.value))),
        };
        let wire = Wire {
            leasehold: FORMAT.to_owned(),
            holder: self.holder.clone(),
            owner: format!("{:016x}", self.owner),
            token: self.token,
            value,
            value_base64,
            ttl_ms: u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX),
            released: self.released,
            acquired_at_ms: self.acquired_at_ms,
            renewed_at_ms: self.renewed_at_ms,
        };
        // Serializing a struct of strings, integers and booleans cannot fail.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// Decode JSON bytes; the error says what is wrong, for
    /// [`Error::InvalidRecord`](leasehold_core::Error::InvalidRecord).
    pub(crate) fn decode(bytes: &[u8]) -> Result<Record, String> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(format!(
                "{} bytes is larger than any lease record (at most {MAX_RECORD_BYTES})",
                bytes.len()
            ));
        }
        if let Ok(old) = serde_json::from_slice::<serde_json::Value>(bytes)
            && old.get("leasehold").and_then(|v| v.as_str()) == Some(OLD_FORMAT)
        {
            return Err(format!(
                "record format {OLD_FORMAT:?} was written by an older leasehold (before records named their owner); stop every candidate of this election that runs the old version, then delete this object"
            ));
        }
        let wire: Wire = serde_json::from_slice(bytes).map_err(|e| {
            format!(
                "not a leasehold lease record ({e}); move that object away or use another prefix"
            )
        })?;
        if wire.leasehold != FORMAT {
            return Err(format!(
                "record format {:?} is not {FORMAT:?} (written by another program or another leasehold version)",
                wire.leasehold
            ));
        }
        let owner = u64::from_str_radix(&wire.owner, 16)
            .ok()
            .filter(|o| *o != 0)
            .ok_or_else(|| format!("owner {:?} is not a non-zero hex number", wire.owner))?;
        if wire.token == Some(0) {
            return Err("token 0 is not a valid fencing token".to_owned());
        }
        if !wire.released && wire.holder.is_empty() {
            return Err("a held record has an empty holder".to_owned());
        }
        let value = match (wire.value, wire.value_base64) {
            (Some(_), Some(_)) => {
                return Err("both `value` and `value_base64` are set".to_owned());
            }
            (Some(text), None) => text.into_bytes(),
            (None, Some(b64)) => BASE64
                .decode(b64.as_bytes())
                .map_err(|e| format!("`value_base64` is not base64: {e}"))?,
            (None, None) => Vec::new(),
        };
        Ok(Record {
            holder: wire.holder,
            owner,
            token: wire.token,
            value,
            ttl: Duration::from_millis(wire.ttl_ms),
            released: wire.released,
            acquired_at_ms: wire.acquired_at_ms,
            renewed_at_ms: wire.renewed_at_ms,
        })
    }

    /// The term's fencing token, given the generation this record was read at.
    pub(crate) fn token_at(&self, generation: i64) -> u64 {
        self.token
            .unwrap_or_else(|| u64::try_from(generation).unwrap_or(0))
    }

    /// The leader this record names, `None` when released; `generation` is
    /// the object version it was read at.
    pub(crate) fn leader(&self, generation: i64) -> Option<LeaderInfo> {
        (!self.released).then(|| LeaderInfo {
            id: self.holder.clone(),
            value: self.value.clone(),
            token: FencingToken(self.token_at(generation)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(value: &[u8]) -> Record {
        Record {
            holder: "node-1".into(),
            owner: 0x9f3c_2a7d_51e0_4b68,
            token: Some(7),
            value: value.to_vec(),
            ttl: Duration::from_millis(15_000),
            released: false,
            acquired_at_ms: 1,
            renewed_at_ms: 2,
        }
    }

    #[test]
    fn round_trips_text_and_binary_values() {
        for value in [&b"10.0.0.7:8080"[..], &[0xff, 0x00, 0xfe][..], &[][..]] {
            let r = sample(value);
            assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        }
        let text = String::from_utf8(sample(b"addr").encode()).unwrap();
        assert!(text.contains("\"value\":\"addr\""), "{text}");
        let bin = String::from_utf8(sample(&[0xff]).encode()).unwrap();
        assert!(bin.contains("value_base64"), "{bin}");
    }

    #[test]
    fn largest_value_fits() {
        let r = sample(&vec![0xffu8; leasehold_core::MAX_VALUE_LEN]);
        let bytes = r.encode();
        assert!(bytes.len() <= MAX_RECORD_BYTES, "{}", bytes.len());
        assert_eq!(Record::decode(&bytes).unwrap(), r);
    }

    #[test]
    fn leader_is_none_when_released() {
        let mut r = sample(b"v");
        assert_eq!(r.leader(99).unwrap().token, FencingToken(7));
        r.token = None;
        assert_eq!(r.leader(99).unwrap().token, FencingToken(99));
        assert!(
            String::from_utf8(r.encode())
                .unwrap()
                .contains("\"owner\":\"9f3c2a7d51e04b68\"")
        );
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        r.released = true;
        assert_eq!(r.leader(99), None);
    }

    #[test]
    fn foreign_data_is_refused_with_a_reason() {
        let cases: [&[u8]; 8] = [
            b"hello world",
            b"",
            br#"{"some":"json"}"#,
            br#"{"leasehold":"lease/v9","holder":"a","owner":"1","ttl_ms":1,"released":false}"#,
            br#"{"leasehold":"lease/v2","holder":"a","owner":"1","token":0,"ttl_ms":1,"released":false}"#,
            br#"{"leasehold":"lease/v2","holder":"a","owner":"0","ttl_ms":1,"released":false}"#,
            br#"{"leasehold":"lease/v2","holder":"","owner":"1","ttl_ms":1,"released":false}"#,
            br#"{"leasehold":"lease/v2","holder":"a","owner":"1","value_base64":"!!","ttl_ms":1,"released":false}"#,
        ];
        for bytes in cases {
            let err = Record::decode(bytes).unwrap_err();
            assert!(!err.is_empty());
        }
        let old = br#"{"leasehold":"lease/v1","holder":"a","term":3,"ttl_ms":1,"released":false}"#;
        assert!(Record::decode(old).unwrap_err().contains("older leasehold"));
        let huge = vec![b' '; MAX_RECORD_BYTES + 1];
        assert!(Record::decode(&huge).unwrap_err().contains("larger"));
    }
}
