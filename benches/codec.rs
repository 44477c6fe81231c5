//! The client-side work of a lock, without a server: encoding the commands,
//! decoding the replies, drawing a token, and a pool checkout/return (against
//! an in-process fake that answers the handshake).
//!
//! `cargo bench --bench codec`

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{Criterion, criterion_group, criterion_main};
use redlease::internals::{self, BenchPool, BenchToken};
use support::fake::FakeRedis;

fn encode(c: &mut Criterion) {
    let token = BenchToken::random();
    let mut buf = BytesMut::with_capacity(1024);
    let mut group = c.benchmark_group("encode");
    for (name, key) in [("8B key", &b"orders:4"[..]), ("64B key", &[b'k'; 64][..])] {
        group.bench_function(format!("SET NX PX, {name}"), |b| {
            b.iter(|| {
                buf.clear();
                internals::encode_acquire(&mut buf, black_box(key), &token, 10_000);
                black_box(buf.len())
            })
        });
        group.bench_function(format!("EVALSHA release, {name}"), |b| {
            b.iter(|| {
                buf.clear();
                internals::encode_release(&mut buf, black_box(key), &token);
                black_box(buf.len())
            })
        });
        group.bench_function(format!("EVALSHA extend, {name}"), |b| {
            b.iter(|| {
                buf.clear();
                internals::encode_extend(&mut buf, black_box(key), &token, 10_000);
                black_box(buf.len())
            })
        });
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    let replies: [(&str, &[u8]); 6] = [
        ("+OK", b"+OK\r\n"),
        ("nil", b"$-1\r\n"),
        (":1", b":1\r\n"),
        (
            "NOSCRIPT error",
            b"-NOSCRIPT No matching script. Please use EVAL.\r\n",
        ),
        (
            "SHA bulk",
            b"$40\r\n0123456789abcdef0123456789abcdef01234567\r\n",
        ),
        ("array of 3", b"*3\r\n:1\r\n$1\r\nx\r\n+OK\r\n"),
    ];
    for (name, bytes) in replies {
        group.bench_function(name, |b| b.iter(|| internals::decode_len(black_box(bytes))));
    }
    group.finish();
}

fn token(c: &mut Criterion) {
    c.bench_function("token: 128 bits from getrandom, hex", |b| {
        b.iter(BenchToken::random)
    });
}

fn pool(c: &mut Criterion) {
    let fake = FakeRedis::redis_like();
    let pool = BenchPool::connect(fake.port, 4);
    c.bench_function("pool: checkout + return", |b| {
        b.iter(|| pool.checkout_return())
    });
}

criterion_group!(benches, encode, decode, token, pool);
criterion_main!(benches);
