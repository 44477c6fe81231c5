//! A naive, obviously-correct RESP2 decoder to check the real one against:
//! recursive, allocating, and written for reading rather than speed. Same
//! rules and limits as `resp::parse`, spelled out one at a time.

use crate::resp::MAX_REPLY;

/// Deepest nesting accepted; mirrors the real decoder's bound.
const MAX_DEPTH: usize = 8;

/// A decoded reply, owned, with array elements kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefReply {
    /// `+...`
    Simple(Vec<u8>),
    /// `-...`
    Error(Vec<u8>),
    /// `:n`
    Integer(i64),
    /// `$n` payload
    Bulk(Vec<u8>),
    /// `$-1` / `*-1`
    Nil,
    /// `*n` elements
    Array(Vec<RefReply>),
}

/// Outcome of decoding the front of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefParse {
    /// A whole reply and the bytes it used.
    Complete(RefReply, usize),
    /// More bytes needed.
    Incomplete,
    /// Not RESP2 (or over the limits).
    Invalid,
}

/// Decodes one reply from the front of `buf`.
pub fn parse(buf: &[u8]) -> RefParse {
    match parse_at(buf, 0) {
        Step::Done(reply, used) => RefParse::Complete(reply, used),
        Step::More => RefParse::Incomplete,
        Step::Bad => RefParse::Invalid,
    }
}

enum Step {
    Done(RefReply, usize),
    More,
    Bad,
}

/// The first line: text before the first CR or LF, which must be a CR
/// immediately followed by LF.
fn first_line(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, ()> {
    for i in 0..buf.len() {
        if buf[i] == b'\n' {
            return Err(());
        }
        if buf[i] == b'\r' {
            if i + 1 == buf.len() {
                return Ok(None);
            }
            if buf[i + 1] != b'\n' {
                return Err(());
            }
            return Ok(Some((buf[..i].to_vec(), i + 2)));
        }
    }
    Ok(None)
}

/// Optional minus, then 1+ decimal digits, within i64.
fn number(text: &[u8]) -> Option<i64> {
    let digits = text.strip_prefix(b"-").unwrap_or(text);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse::<i64>().ok()
}

fn parse_at(buf: &[u8], depth: usize) -> Step {
    if buf.is_empty() {
        return Step::More;
    }
    let (line, after) = match first_line(&buf[1..]) {
        Err(()) => return Step::Bad,
        Ok(None) => return Step::More,
        Ok(Some(found)) => found,
    };
    let header = 1 + after;
    match buf[0] {
        b'+' => Step::Done(RefReply::Simple(line), header),
        b'-' => Step::Done(RefReply::Error(line), header),
        b':' => match number(&line) {
            Some(n) => Step::Done(RefReply::Integer(n), header),
            None => Step::Bad,
        },
        b'$' => match number(&line) {
            None => Step::Bad,
            Some(-1) => Step::Done(RefReply::Nil, header),
            Some(n) if n < 0 || n > MAX_REPLY as i64 => Step::Bad,
            Some(n) => {
                let len = n as usize;
                if buf.len() < header + len + 2 {
                    Step::More
                } else if &buf[header + len..header + len + 2] != b"\r\n" {
                    Step::Bad
                } else {
                    Step::Done(
                        RefReply::Bulk(buf[header..header + len].to_vec()),
                        header + len + 2,
                    )
                }
            }
        },
        b'*' => match number(&line) {
            None => Step::Bad,
            Some(-1) => Step::Done(RefReply::Nil, header),
            Some(n) if n < 0 || n > MAX_REPLY as i64 => Step::Bad,
            Some(_) if depth >= MAX_DEPTH => Step::Bad,
            Some(n) => {
                let mut items = Vec::new();
                let mut used = header;
                for _ in 0..n {
                    match parse_at(&buf[used..], depth + 1) {
                        Step::Done(item, n) => {
                            items.push(item);
                            used += n;
                        }
                        other => return other,
                    }
                }
                Step::Done(RefReply::Array(items), used)
            }
        },
        _ => Step::Bad,
    }
}
