//! RESP2, the Redis wire protocol: an encoder for the few commands we send and
//! an allocation-free decoder for the replies.
//!
//! The decoder follows mini-redis's `parse_frame`: it first makes sure a whole
//! reply is in the buffer, without allocating, and only then hands back a view
//! into it. A short buffer is an expected state ([`Parse::Incomplete`]), not an
//! error. Every length the server announces is checked against [`MAX_REPLY`]
//! before we wait for the bytes, so a hostile `$10000000000` can neither make
//! us buffer without bound nor wait for data that will never fit.

use std::cell::Cell;

use bytes::{BufMut, BytesMut};

/// The largest reply we accept, in bytes, and the size of each connection's
/// read buffer. Replies to our commands are tiny (`+OK`, `:1`, a 40-byte SHA);
/// the largest legitimate one is `INFO server` at build time (about 1.5 KiB)
/// or a long server error message.
pub(crate) const MAX_REPLY: usize = 8 * 1024;

/// Deepest array nesting we frame before calling the reply hostile. We never
/// ask for arrays; this bound only keeps the decoder's recursion small.
const MAX_DEPTH: usize = 8;

/// One decoded reply, borrowing from the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply<'a> {
    /// `+OK`: a simple string, without its `+` and line ending.
    Simple(&'a [u8]),
    /// `-ERR ...`: a server error, without its `-` and line ending.
    Error(&'a [u8]),
    /// `:1`
    Integer(i64),
    /// `$3\r\nabc\r\n`: a bulk string's payload.
    Bulk(&'a [u8]),
    /// `$-1` or `*-1`: the null reply.
    Nil,
    /// `*n`: an array of `n` elements, framed (so the stream stays in step)
    /// but not kept: none of our commands expects one.
    Array(usize),
}

/// The outcome of one decoding attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parse<'a> {
    /// A whole reply and the number of bytes it used.
    Complete(Reply<'a>, usize),
    /// More bytes are needed; nothing was consumed.
    Incomplete,
}

/// Why bytes from the server are not a valid reply. The message is what the
/// user sees after "protocol error: ".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProtocolError(pub(crate) &'static str);

/// Tries to decode one reply from the front of `buf`.
#[inline(always)]
pub(crate) fn parse(buf: &[u8]) -> Result<Parse<'_>, ProtocolError> {
    // The hot path's replies, recognised whole before the general decoder
    // (which gives the same: `fast_replies_agree_with_the_decoder`).
    // Their first four bytes compared as one word.
    const fn word(bytes: &[u8; 4]) -> u32 {
        u32::from_le_bytes(*bytes)
    }
    if let Some(head) = buf.first_chunk::<4>() {
        let newline_after = buf.get(4) == Some(&b'\n');
        match u32::from_le_bytes(*head) {
            w if w == const { word(b":1\r\n") } => {
                return Ok(Parse::Complete(Reply::Integer(1), 4));
            }
            w if w == const { word(b":0\r\n") } => {
                return Ok(Parse::Complete(Reply::Integer(0), 4));
            }
            w if w == const { word(b"+OK\r") } && newline_after => {
                return Ok(Parse::Complete(Reply::Simple(&buf[1..3]), 5));
            }
            w if w == const { word(b"$-1\r") } && newline_after => {
                return Ok(Parse::Complete(Reply::Nil, 5));
            }
            _ => {}
        }
    }
    parse_at(buf, 0)
}

fn parse_at(buf: &[u8], depth: usize) -> Result<Parse<'_>, ProtocolError> {
    let Some(&kind) = buf.first() else {
        return Ok(Parse::Incomplete);
    };
    let Some((line, after_line)) = line(&buf[1..])? else {
        return Ok(Parse::Incomplete);
    };
    let header = 1 + after_line;
    let reply = match kind {
        b'+' => Reply::Simple(line),
        b'-' => Reply::Error(line),
        b':' => Reply::Integer(integer(line)?),
        b'$' => match length(line)? {
            None => Reply::Nil,
            Some(len) => {
                let end = header + len;
                if buf.len() < end + 2 {
                    return Ok(Parse::Incomplete);
                }
                if &buf[end..end + 2] != b"\r\n" {
                    return Err(ProtocolError("bulk string not terminated by CRLF"));
                }
                return Ok(Parse::Complete(Reply::Bulk(&buf[header..end]), end + 2));
            }
        },
        b'*' => match length(line)? {
            None => Reply::Nil,
            Some(count) => {
                if depth >= MAX_DEPTH {
                    return Err(ProtocolError("arrays nested too deeply"));
                }
                let mut used = header;
                for _ in 0..count {
                    match parse_at(&buf[used..], depth + 1)? {
                        Parse::Complete(_, n) => used += n,
                        Parse::Incomplete => return Ok(Parse::Incomplete),
                    }
                }
                return Ok(Parse::Complete(Reply::Array(count), used));
            }
        },
        _ => return Err(ProtocolError("unknown reply type")),
    };
    Ok(Parse::Complete(reply, header))
}

/// One pub/sub push on a subscribed connection: `[kind, channel, payload]`,
/// the shape of `message`, `subscribe` and `unsubscribe` alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Push<'a> {
    pub(crate) kind: &'a [u8],
    pub(crate) channel: &'a [u8],
    pub(crate) payload: Reply<'a>,
}

/// What a subscribed connection receives: a push, or any other reply (an
/// error refusing a subscription, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed<'a> {
    Push(Push<'a>),
    Other(Reply<'a>),
}

/// Tries to decode one push from the front of `buf`: `None` when more bytes
/// are needed, else what it is and the bytes it used. Allocation-free, and
/// bounded like [`parse`].
pub(crate) fn parse_push(buf: &[u8]) -> Result<Option<(Pushed<'_>, usize)>, ProtocolError> {
    let (reply, used) = match parse(buf)? {
        Parse::Incomplete => return Ok(None),
        Parse::Complete(reply, used) => (reply, used),
    };
    if reply != Reply::Array(3) {
        return Ok(Some((Pushed::Other(reply), used)));
    }
    // The whole array is there: read its three elements after its header.
    let mut at = buf.iter().position(|&b| b == b'\n').map_or(used, |i| i + 1);
    let mut items = [Reply::Nil; 3];
    for item in &mut items {
        match parse(&buf[at..used])? {
            Parse::Complete(reply, n) => {
                *item = reply;
                at += n;
            }
            Parse::Incomplete => return Err(ProtocolError("array shorter than announced")),
        }
    }
    Ok(Some(match items {
        [Reply::Bulk(kind), Reply::Bulk(channel), payload] => (
            Pushed::Push(Push {
                kind,
                channel,
                payload,
            }),
            used,
        ),
        _ => (Pushed::Other(Reply::Array(3)), used),
    }))
}

/// Finds the first line of `buf`: its content and the offset just past its
/// CRLF. A bare `\n`, or a `\r` not followed by `\n`, is a protocol error.
fn line(buf: &[u8]) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    match buf.iter().position(|&b| b == b'\r' || b == b'\n') {
        None => Ok(None),
        Some(i) if buf[i] == b'\n' => Err(ProtocolError("line ended by LF without CR")),
        Some(i) => match buf.get(i + 1) {
            None => Ok(None),
            Some(b'\n') => Ok(Some((&buf[..i], i + 2))),
            Some(_) => Err(ProtocolError("CR not followed by LF")),
        },
    }
}

/// A RESP integer: an optional `-`, then 1 to 19 ASCII digits, no overflow.
fn integer(line: &[u8]) -> Result<i64, ProtocolError> {
    const BAD: ProtocolError = ProtocolError("malformed integer");
    let (negative, digits) = match line.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, line),
    };
    if digits.is_empty() {
        return Err(BAD);
    }
    let mut value: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(BAD);
        }
        let digit = i64::from(d - b'0');
        // Accumulate negatively so that i64::MIN parses too.
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_sub(digit))
            .ok_or(BAD)?;
    }
    if negative {
        Ok(value)
    } else {
        value.checked_neg().ok_or(BAD)
    }
}

/// A bulk or array length: `-1` is the null reply (`None`); any other
/// negative, or anything over [`MAX_REPLY`], is refused before we wait for
/// the bytes (an array element takes at least 3 bytes, so the same bound caps
/// array counts).
fn length(line: &[u8]) -> Result<Option<usize>, ProtocolError> {
    match integer(line)? {
        -1 => Ok(None),
        n if n < 0 => Err(ProtocolError("negative length")),
        n if n > MAX_REPLY as i64 => Err(ProtocolError("reply larger than the decoder's cap")),
        // Cannot truncate: 0 <= n <= MAX_REPLY.
        n => Ok(Some(n as usize)),
    }
}

/// A connection's read buffer: fixed size, allocated and zeroed once, so it
/// is also the cap on what a hostile server can make us hold. Unparsed bytes
/// are `buf[start..end]`.
pub(crate) struct ReadBuf {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl ReadBuf {
    pub(crate) fn new() -> ReadBuf {
        ReadBuf {
            buf: vec![0u8; MAX_REPLY].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// Decodes one reply if a whole one is buffered, hands it to `read` and
    /// consumes it; `Ok(None)` when more bytes are needed.
    #[cfg(any(test, feature = "internals"))]
    #[inline]
    pub(crate) fn take<T>(
        &mut self,
        read: &mut impl FnMut(Reply<'_>) -> T,
    ) -> Result<Option<T>, ProtocolError> {
        self.take_raw(&mut |reply, _| read(reply))
    }

    /// Like [`take`](Self::take), also handing over the reply's bytes as
    /// they came (for the few replies whose array items matter: `ROLE`,
    /// `SENTINEL`; see [`items`]).
    #[inline]
    pub(crate) fn take_raw<T>(
        &mut self,
        read: &mut impl FnMut(Reply<'_>, &[u8]) -> T,
    ) -> Result<Option<T>, ProtocolError> {
        if self.start == self.end {
            return Ok(None);
        }
        let buf = &self.buf[self.start..self.end];
        match parse(buf)? {
            Parse::Incomplete => Ok(None),
            Parse::Complete(reply, used) => {
                let out = read(reply, &buf[..used]);
                self.consume(used);
                Ok(Some(out))
            }
        }
    }

    /// Decodes one push (see [`parse_push`]) if a whole one is buffered,
    /// hands it to `read` and consumes it; `Ok(None)` when more bytes are
    /// needed.
    pub(crate) fn take_push<T>(
        &mut self,
        read: impl FnOnce(Pushed<'_>) -> T,
    ) -> Result<Option<T>, ProtocolError> {
        match parse_push(&self.buf[self.start..self.end])? {
            None => Ok(None),
            Some((pushed, used)) => {
                let out = read(pushed);
                self.consume(used);
                Ok(Some(out))
            }
        }
    }

    #[inline]
    fn consume(&mut self, used: usize) {
        self.start += used;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Free space to read into, after moving unparsed bytes to the front.
    /// An error when the buffer is full of one incomplete reply: it can only
    /// be larger than [`MAX_REPLY`].
    pub(crate) fn spare(&mut self) -> Result<&mut [u8], ProtocolError> {
        if self.end == self.buf.len() {
            if self.start == 0 {
                return Err(ProtocolError("reply larger than the decoder's cap"));
            }
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        Ok(&mut self.buf[self.end..])
    }

    /// Records that `n` bytes were read into [`spare`](Self::spare).
    pub(crate) fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Whether no unparsed byte is left.
    pub(crate) fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// The top-level items of a whole array reply given as bytes (from
/// [`ReadBuf::take_raw`]); `None` if it is not an array. Off the hot path:
/// the items are collected into a `Vec`.
pub(crate) fn items(raw: &[u8]) -> Option<Vec<Reply<'_>>> {
    let Ok(Parse::Complete(Reply::Array(count), _)) = parse(raw) else {
        return None;
    };
    let (_, after_line) = line(&raw[1..]).ok()??;
    let mut at = 1 + after_line;
    let mut out = Vec::with_capacity(count.min(16));
    for _ in 0..count {
        let Ok(Parse::Complete(item, used)) = parse(&raw[at..]) else {
            return None;
        };
        out.push(item);
        at += used;
    }
    Some(out)
}

/// Appends one command, as an array of bulk strings, to `buf`.
///
/// Allocation-free once `buf` has the capacity: lengths are formatted on the
/// stack by `itoa`.
pub(crate) fn encode(buf: &mut BytesMut, args: &[&[u8]]) {
    buf.put_u8(b'*');
    buf.put_slice(itoa::Buffer::new().format(args.len()).as_bytes());
    buf.put_slice(b"\r\n");
    for arg in args {
        put_bulk(buf, arg);
    }
}

/// A short piece of a command in a fixed-size array, of which the first
/// `len` bytes count. Appending one copies the whole array (a constant-size
/// copy the compiler does inline, where a copy of a length known only at
/// run time is a call to `memcpy`), then cuts the buffer back to `len`.
#[derive(Clone, Copy)]
pub(crate) struct Padded<const N: usize> {
    pub(crate) bytes: [u8; N],
    pub(crate) len: usize,
}

impl<const N: usize> Padded<N> {
    /// `bytes`, padded with zeros; `None` if longer than `N`.
    pub(crate) fn new(bytes: &[u8]) -> Option<Padded<N>> {
        let mut padded = [0u8; N];
        padded.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(Padded {
            bytes: padded,
            len: bytes.len(),
        })
    }

    #[cfg(test)]
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Appends the counted bytes to `buf`.
    #[inline(always)]
    pub(crate) fn put(&self, buf: &mut BytesMut) {
        let end = buf.len() + self.len;
        buf.extend_from_slice(&self.bytes);
        buf.truncate(end);
    }
}

/// Every two-digit number's digits, `00` to `99`.
const PAIRS: [[u8; 2]; 100] = {
    let mut table = [[0u8; 2]; 100];
    let mut i = 0;
    while i < 100 {
        table[i] = [b'0' + (i / 10) as u8, b'0' + (i % 10) as u8];
        i += 1;
    }
    table
};

/// The decimal digits of `n`, ending at byte 20 of 40 (so that a
/// constant-size copy of 20 bytes can take them from their start), and how
/// many there are.
#[inline(always)]
fn digits(mut n: u64) -> ([u8; 40], usize) {
    let mut out = [0u8; 40];
    let mut at = 20;
    while n >= 100 {
        at -= 2;
        out[at..at + 2].copy_from_slice(&PAIRS[(n % 100) as usize]);
        n /= 100;
    }
    if n >= 10 {
        at -= 2;
        out[at..at + 2].copy_from_slice(&PAIRS[n as usize]);
    } else {
        at -= 1;
        out[at] = b'0' + n as u8;
    }
    (out, 20 - at)
}

/// Writes `n`'s digits at `out[at..]`, returns where they end.
#[inline(always)]
fn put_digits<const N: usize>(out: &mut [u8; N], at: usize, n: u64) -> usize {
    let (digits, count) = digits(n);
    out[at..at + 20].copy_from_slice(&digits[20 - count..40 - count]);
    at + count
}

/// A bulk string's length line, `$<len>\r\n`.
#[inline]
pub(crate) fn len_line(len: usize) -> Padded<24> {
    let mut out = Padded {
        bytes: [0u8; 24],
        len: 0,
    };
    out.bytes[0] = b'$';
    let end = put_digits(&mut out.bytes, 1, len as u64);
    out.bytes[end..end + 2].copy_from_slice(b"\r\n");
    out.len = end + 2;
    out
}

/// Appends a bulk string's length line, `$<len>\r\n`: a key's (under 100
/// bytes) as one small constant-size copy, any other through [`len_line`].
#[inline(always)]
pub(crate) fn put_len_line(buf: &mut BytesMut, len: usize) {
    if len < 10 {
        buf.extend_from_slice(&[b'$', b'0' + len as u8, b'\r', b'\n']);
    } else if len < 100 {
        let [tens, ones] = PAIRS[len];
        buf.extend_from_slice(&[b'$', tens, ones, b'\r', b'\n']);
    } else {
        len_line(len).put(buf);
    }
}

/// Appends a number as a bulk string, `$<digits>\r\n<number>\r\n`, as
/// `Op::encode` appends a TTL: through [`short_num`], else [`num_bulk`].
#[cfg(test)]
fn put_num_bulk(buf: &mut BytesMut, n: u64) {
    match short_num(n) {
        Some(padded) => padded.put(buf),
        None => num_bulk(n).put(buf),
    }
}

/// `n` as a bulk string, `$<digits>\r\n<number>\r\n`, in 16 bytes (to be
/// copied at that constant size) if it has up to 8 digits (a TTL in
/// milliseconds up to a day): the one this thread assembled last if it was
/// `n` (callers mostly lock with one TTL), else assembled now by
/// [`short_num_bulk`] and kept. `None` for longer numbers: see
/// [`num_bulk`].
#[inline(always)]
pub(crate) fn short_num(n: u64) -> Option<Padded<16>> {
    if n >= 100_000_000 {
        return None;
    }
    Some(match LAST_NUM.try_with(Cell::get) {
        Ok((last, padded)) if last == n => padded,
        _ => {
            let padded = short_num_bulk(n);
            // Gone only while the thread exits: then nothing is kept.
            let _ = LAST_NUM.try_with(|last| last.set((n, padded)));
            padded
        }
    })
}

thread_local! {
    /// The number below 10^8 this thread appended last, as appended
    /// (starting as 0's).
    static LAST_NUM: Cell<(u64, Padded<16>)> = const {
        Cell::new((
            0,
            Padded {
                bytes: *b"$1\r\n0\r\n\0\0\0\0\0\0\0\0\0",
                len: 7,
            },
        ))
    };
}

/// `n` (below 10^8) as a bulk string, assembled in 16 bytes.
#[inline(never)]
fn short_num_bulk(n: u64) -> Padded<16> {
    debug_assert!(n < 100_000_000);
    let count = 1
        + usize::from(n >= 10)
        + usize::from(n >= 100)
        + usize::from(n >= 1_000)
        + usize::from(n >= 10_000)
        + usize::from(n >= 100_000)
        + usize::from(n >= 1_000_000)
        + usize::from(n >= 10_000_000);
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&[b'$', b'0' + count as u8, b'\r', b'\n']);
    // Digits from the last, two at a time.
    let (mut at, mut rest) = (4 + count, n as usize);
    while rest >= 100 {
        at -= 2;
        out[at..at + 2].copy_from_slice(&PAIRS[rest % 100]);
        rest /= 100;
    }
    if rest >= 10 {
        out[at - 2..at].copy_from_slice(&PAIRS[rest]);
    } else {
        out[at - 1] = b'0' + rest as u8;
    }
    out[4 + count..6 + count].copy_from_slice(b"\r\n");
    Padded {
        bytes: out,
        len: 6 + count,
    }
}

/// A number as a bulk string, `$<digits>\r\n<number>\r\n`.
#[inline]
pub(crate) fn num_bulk(n: u64) -> Padded<32> {
    let mut out = Padded {
        bytes: [0u8; 32],
        len: 0,
    };
    let (digits, count) = digits(n);
    out.bytes[0] = b'$';
    // At most 20 digits: the count is one digit or two.
    let at = if count >= 10 {
        out.bytes[1..3].copy_from_slice(&PAIRS[count]);
        3
    } else {
        out.bytes[1] = b'0' + count as u8;
        2
    };
    out.bytes[at..at + 2].copy_from_slice(b"\r\n");
    out.bytes[at + 2..at + 22].copy_from_slice(&digits[20 - count..40 - count]);
    let end = at + 2 + count;
    out.bytes[end..end + 2].copy_from_slice(b"\r\n");
    out.len = end + 2;
    out
}

/// Appends one bulk string: `$<len>\r\n<bytes>\r\n`.
pub(crate) fn put_bulk(buf: &mut BytesMut, arg: &[u8]) {
    buf.put_u8(b'$');
    buf.put_slice(itoa::Buffer::new().format(arg.len()).as_bytes());
    buf.put_slice(b"\r\n");
    buf.put_slice(arg);
    buf.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The replies `parse` recognises before the general decoder decode the
    /// same through it, whole, cut short, or followed by more.
    #[test]
    fn fast_replies_agree_with_the_decoder() {
        for reply in [&b"+OK\r\n"[..], b":0\r\n", b":1\r\n", b"$-1\r\n"] {
            for cut in 0..=reply.len() {
                assert_eq!(parse(&reply[..cut]), parse_at(&reply[..cut], 0));
            }
            let mut more = reply.to_vec();
            more.extend_from_slice(b":7\r\n");
            assert_eq!(parse(&more), parse_at(&more, 0));
            assert!(matches!(parse(&more), Ok(Parse::Complete(_, n)) if n == reply.len()));
        }
        for other in [
            &b"+OKAY\r\n"[..],
            b":10\r\n",
            b":1\n",
            b"$-10\r\n",
            b"+OK\n",
        ] {
            assert_eq!(parse(other), parse_at(other, 0));
        }
    }

    /// The padded pieces are what `put_bulk` writes, at every digit count.
    #[test]
    fn padded_numbers_match_the_general_encoder() {
        let mut values = vec![0, 1, 9, 10, 99, 100, 30_000, u64::MAX, u64::MAX - 1];
        values.extend((0..20).map(|p| 10u64.pow(p)));
        values.extend((1..20).map(|p| 10u64.pow(p) - 1));
        // And a sweep of the short forms' whole range.
        values.extend((0..10_000u64).map(|i| i * 9_999 + i % 7));
        for n in values {
            let mut expected = BytesMut::new();
            put_bulk(&mut expected, n.to_string().as_bytes());
            assert_eq!(num_bulk(n).as_bytes(), &expected[..], "{n}");
            let mut short = BytesMut::new();
            put_num_bulk(&mut short, n);
            assert_eq!(&short[..], &expected[..], "{n}");
            let line = len_line(n as usize);
            let mut short = BytesMut::new();
            put_len_line(&mut short, n as usize);
            assert_eq!(&short[..], line.as_bytes(), "{n}");
            assert_eq!(line.as_bytes(), format!("${n}\r\n").as_bytes());
            let mut buf = BytesMut::from(&b"x"[..]);
            num_bulk(n).put(&mut buf);
            assert_eq!(&buf[1..], &expected[..]);
        }
        assert!(Padded::<4>::new(b"12345").is_none());
        assert_eq!(Padded::<4>::new(b"1234").unwrap().as_bytes(), b"1234");
    }

    /// The number a thread appended last is appended again as kept, and
    /// only for that number: from a thread's first call (the kept 0), for
    /// numbers repeated, alternated and sent through the long form in
    /// between, after other bytes in the buffer, on two threads at once.
    #[test]
    fn the_last_number_kept_is_only_used_for_itself() {
        fn check(ns: impl IntoIterator<Item = u64>) {
            let mut buf = BytesMut::from(&b"head"[..]);
            let mut expected = BytesMut::from(&b"head"[..]);
            for n in ns {
                put_num_bulk(&mut buf, n);
                put_bulk(&mut expected, n.to_string().as_bytes());
                assert_eq!(&buf[..], &expected[..], "{n}");
            }
        }
        let threads: Vec<_> = [7, 30_000]
            .into_iter()
            .map(|seed| {
                std::thread::spawn(move || {
                    check([0, 0, 1, 0]);
                    let mut rng = fastrand::Rng::with_seed(seed);
                    check((0..5_000).map(|_| match rng.u8(0..4) {
                        0 => seed,
                        1 => rng.u64(0..100),
                        2 => rng.u64(99_999_990..100_000_010),
                        _ => rng.u64(..),
                    }));
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("no mismatch");
        }
    }

    /// Pushes as a subscribed connection receives them, whole and cut.
    #[test]
    fn array_items_are_found() {
        let raw = b"*3\r\n$6\r\nmaster\r\n:42\r\n*1\r\n+x\r\n";
        assert_eq!(
            items(raw),
            Some(vec![
                Reply::Bulk(b"master"),
                Reply::Integer(42),
                Reply::Array(1)
            ])
        );
        assert_eq!(items(b"+OK\r\n"), None);
        assert_eq!(items(b"*2\r\n$1\r\na\r\n"), None);
        assert_eq!(items(b"*-1\r\n"), None);
    }

    #[test]
    fn pushes() {
        let message = b"*3\r\n$7\r\nmessage\r\n$17\r\nredlease:wake:k\r\n\r\n$8\r\nab12cd34\r\n";
        // A key may hold CRLF: the channel's length frames it.
        let (pushed, used) = parse_push(message).expect("valid").expect("whole");
        assert_eq!(used, message.len());
        assert_eq!(
            pushed,
            Pushed::Push(Push {
                kind: b"message",
                channel: b"redlease:wake:k\r\n",
                payload: Reply::Bulk(b"ab12cd34"),
            })
        );
        for cut in 0..message.len() {
            assert_eq!(parse_push(&message[..cut]), Ok(None), "cut at {cut}");
        }
        let confirmed = b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n";
        assert!(matches!(
            parse_push(confirmed),
            Ok(Some((
                Pushed::Push(Push {
                    kind: b"subscribe",
                    payload: Reply::Integer(1),
                    ..
                }),
                _
            )))
        ));
        assert!(matches!(
            parse_push(b"-NOPERM no\r\n"),
            Ok(Some((Pushed::Other(Reply::Error(b"NOPERM no")), 12)))
        ));
        assert!(matches!(
            parse_push(b"*3\r\n:1\r\n:2\r\n:3\r\n"),
            Ok(Some((Pushed::Other(Reply::Array(3)), 16)))
        ));
    }

    fn complete(bytes: &[u8]) -> (Reply<'_>, usize) {
        match parse(bytes) {
            Ok(Parse::Complete(reply, used)) => (reply, used),
            other => panic!("{bytes:?} did not decode: {other:?}"),
        }
    }

    fn error(bytes: &[u8]) -> &'static str {
        match parse(bytes) {
            Err(ProtocolError(msg)) => msg,
            other => panic!("{bytes:?} should be refused, got {other:?}"),
        }
    }

    /// The replies our commands get, decoded to the right kind and length.
    #[test]
    fn decodes_each_reply_kind() {
        assert_eq!(complete(b"+OK\r\n"), (Reply::Simple(b"OK"), 5));
        assert_eq!(
            complete(b"-ERR wrong\r\n+OK\r\n"),
            (Reply::Error(b"ERR wrong"), 12)
        );
        assert_eq!(complete(b":1\r\n"), (Reply::Integer(1), 4));
        assert_eq!(complete(b":-42\r\n"), (Reply::Integer(-42), 6));
        assert_eq!(complete(b"$-1\r\n"), (Reply::Nil, 5));
        assert_eq!(complete(b"*-1\r\n"), (Reply::Nil, 5));
        assert_eq!(complete(b"$3\r\nabc\r\n"), (Reply::Bulk(b"abc"), 9));
        assert_eq!(complete(b"$0\r\n\r\n"), (Reply::Bulk(b""), 6));
        assert_eq!(
            complete(b"*2\r\n:1\r\n$1\r\nx\r\n:9\r\n"),
            (Reply::Array(2), 15)
        );
    }

    /// Bulk payloads are binary: CR, LF and NUL inside are data.
    #[test]
    fn bulk_payload_is_binary_safe() {
        assert_eq!(
            complete(b"$4\r\n\r\n\0\xff\r\n"),
            (Reply::Bulk(b"\r\n\0\xff"), 10)
        );
    }

    /// Every strict prefix of a valid reply is incomplete, never an error.
    #[test]
    fn every_prefix_is_incomplete() {
        let whole: &[u8] = b"*3\r\n$5\r\nhello\r\n:7\r\n*1\r\n+OK\r\n";
        for cut in 0..whole.len() {
            assert_eq!(parse(&whole[..cut]), Ok(Parse::Incomplete), "cut at {cut}");
        }
        assert_eq!(complete(whole), (Reply::Array(3), whole.len()));
    }

    /// Hostile lengths are refused from the header alone.
    #[test]
    fn refuses_hostile_lengths_before_waiting_for_data() {
        assert_eq!(
            error(b"$10000000000\r\n"),
            "reply larger than the decoder's cap"
        );
        assert_eq!(
            error(b"*2147483648\r\n"),
            "reply larger than the decoder's cap"
        );
        assert_eq!(error(b"$-5\r\n"), "negative length");
        assert_eq!(error(b"$99999999999999999999\r\n"), "malformed integer");
        assert_eq!(error(b"*-2\r\n"), "negative length");
    }

    /// Malformed framing is refused, not guessed at.
    #[test]
    fn refuses_malformed_framing() {
        assert_eq!(error(b"!3\r\nabc\r\n"), "unknown reply type");
        assert_eq!(error(b"+OK\n"), "line ended by LF without CR");
        assert_eq!(error(b"+OK\rX"), "CR not followed by LF");
        assert_eq!(
            error(b"$3\r\nabcde\r\n"),
            "bulk string not terminated by CRLF"
        );
        assert_eq!(error(b":\r\n"), "malformed integer");
        assert_eq!(error(b":-\r\n"), "malformed integer");
        assert_eq!(error(b":1x\r\n"), "malformed integer");
        assert_eq!(error(b":+1\r\n"), "malformed integer");
    }

    /// Integers cover the whole i64 range and nothing beyond.
    #[test]
    fn integer_limits() {
        assert_eq!(
            complete(b":9223372036854775807\r\n").0,
            Reply::Integer(i64::MAX)
        );
        assert_eq!(
            complete(b":-9223372036854775808\r\n").0,
            Reply::Integer(i64::MIN)
        );
        assert_eq!(error(b":9223372036854775808\r\n"), "malformed integer");
    }

    /// Nesting is bounded so the decoder's recursion is.
    #[test]
    fn refuses_deep_nesting() {
        let mut deep = Vec::new();
        for _ in 0..=MAX_DEPTH {
            deep.extend_from_slice(b"*1\r\n");
        }
        deep.extend_from_slice(b":1\r\n");
        assert_eq!(error(&deep), "arrays nested too deeply");
        // One level less is fine.
        assert!(matches!(
            parse(&deep[4..]),
            Ok(Parse::Complete(Reply::Array(1), _))
        ));
    }

    /// A command is encoded as an array of bulk strings, binary-safe.
    #[test]
    fn encodes_commands_as_bulk_arrays() {
        let mut buf = BytesMut::new();
        encode(&mut buf, &[b"SET", b"k\r\n", b"", b"PX", b"100"]);
        assert_eq!(
            &buf[..],
            b"*5\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$0\r\n\r\n$2\r\nPX\r\n$3\r\n100\r\n"
        );
    }
}
