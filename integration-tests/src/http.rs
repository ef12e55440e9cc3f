//! A minimal HTTP/1.1 client for the harness's own needs (health checks,
//! metrics, bucket creation, etcd's JSON gateway): one request per
//! connection, `Connection: close`, plain and chunked bodies.
//!
//! It is not a general client: no TLS, no redirects, no keep-alive.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::HarnessError;

/// How long one request may take, connect to last byte.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A response: its status code and its body (decoded as UTF-8, lossily).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code, e.g. 200.
    pub status: u16,
    /// The body, with chunked transfer encoding removed.
    pub body: String,
}

/// `GET path` on `addr`.
///
/// # Errors
///
/// The connection fails, the response is malformed, or it takes longer than
/// [`REQUEST_TIMEOUT`]. A non-2xx status is not an error.
///
/// # Cancel safety
///
/// Cancel safe: dropping the future closes the connection.
pub async fn get(addr: SocketAddr, path: &str) -> Result<HttpResponse, HarnessError> {
    request(addr, "GET", path, None).await
}

/// `POST path` on `addr` with `body` of type `content_type`.
///
/// # Errors
///
/// As for [`get`].
///
/// # Cancel safety
///
/// Cancel safe, but the server may have received and applied the request.
pub async fn post(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> Result<HttpResponse, HarnessError> {
    request(addr, "POST", path, Some((content_type, body))).await
}

/// Sends `DELETE path` (the chaos suite deletes a Cloud Storage lease object
/// by hand with it) and returns the answer.
///
/// # Errors
///
/// As for [`get`].
///
/// # Cancel safety
///
/// Cancel safe, but the server may have received and applied the request.
pub async fn delete(addr: SocketAddr, path: &str) -> Result<HttpResponse, HarnessError> {
    request(addr, "DELETE", path, None).await
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
) -> Result<HttpResponse, HarnessError> {
    let what = format!("{method} http://{addr}{path}");
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange(addr, method, path, body)).await {
        Ok(Ok(raw)) => parse_response(&raw)
            .map_err(|e| HarnessError::Protocol(format!("{what}: malformed response: {e}"))),
        Ok(Err(e)) => Err(HarnessError::io(what, e)),
        Err(_) => Err(HarnessError::Protocol(format!(
            "{what}: no complete response within {REQUEST_TIMEOUT:?}"
        ))),
    }
}

async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\nUser-Agent: leasehold-harness\r\n"
    );
    let payload: &[u8] = match body {
        Some((content_type, payload)) => {
            head.push_str(&format!(
                "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
                payload.len()
            ));
            payload
        }
        None => &[],
    };
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(payload).await?;
    stream.flush().await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    Ok(raw)
}

fn parse_response(raw: &[u8]) -> Result<HttpResponse, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut payload = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("empty response")?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            let len: usize = value
                .parse()
                .map_err(|_| format!("bad content-length {value:?}"))?;
            if payload.len() < len {
                return Err(format!("body has {} of {len} bytes", payload.len()));
            }
            payload = &payload[..len];
        }
    }
    let body = if chunked {
        decode_chunked(payload)?
    } else {
        payload.to_vec()
    };
    Ok(HttpResponse {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn decode_chunked(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    // Each chunk is at least its size line: the count bounds the loop.
    for _ in 0..=data.len() {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("bad chunk size {size_hex:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
    Err("too many chunks".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_plain_response() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\n\r\nhello";
        let response = parse_response(raw).unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, "hello");
    }

    #[test]
    fn parses_a_chunked_response() {
        let raw = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let response = parse_response(raw).unwrap();
        assert_eq!(response.status, 404);
        assert_eq!(response.body, "abcde");
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_response(b"nonsense").is_err());
        assert!(parse_response(b"HTTP/1.1 x\r\n\r\n").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
                .is_err()
        );
    }
}
