//! Tokens after a `fork`: the child must never draw the tokens its parent
//! draws. Tokens come straight from the OS (`getrandom`, one system call per
//! lock; see the README's "Tokens" note), so this holds today; the test is
//! here so that a user-space generator (whose state a `fork` copies) cannot
//! come back without fork detection that works.
//!
//! Alone in its binary: forking a process that runs other tests' threads
//! would copy them half-way through whatever they were doing.

#![allow(unsafe_code)] // fork, pipe, read, write, waitpid, _exit

use std::collections::HashSet;

use redlease::internals::BenchToken;

/// Tokens drawn by each process after the fork.
const N: usize = 2_000;
const TOKEN: usize = 32;

#[test]
fn a_forked_child_never_draws_its_parents_tokens() {
    // The parent has drawn tokens before it forks: a generator would have
    // state (and buffered output) for the child to inherit.
    for _ in 0..N {
        BenchToken::random();
    }
    let mut fds = [0 as libc::c_int; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    let (read_end, write_end) = (fds[0], fds[1]);
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // The child: no allocation, no lock, no panic; its tokens go to the
        // pipe, then it leaves without running the parent's exit code.
        let mut out = [0u8; N * TOKEN];
        for chunk in out.chunks_exact_mut(TOKEN) {
            chunk.copy_from_slice(BenchToken::random().as_bytes());
        }
        let mut sent = 0;
        while sent < out.len() {
            let n =
                unsafe { libc::write(write_end, out[sent..].as_ptr().cast(), out.len() - sent) };
            if n <= 0 {
                unsafe { libc::_exit(1) };
            }
            sent += n as usize;
        }
        unsafe { libc::_exit(0) };
    }
    unsafe { libc::close(write_end) };
    let parents: Vec<[u8; TOKEN]> = (0..N)
        .map(|_| {
            BenchToken::random()
                .as_bytes()
                .try_into()
                .expect("32 bytes")
        })
        .collect();
    let mut theirs = vec![0u8; N * TOKEN];
    let mut got = 0;
    while got < theirs.len() {
        let n = unsafe {
            libc::read(
                read_end,
                theirs[got..].as_mut_ptr().cast(),
                theirs.len() - got,
            )
        };
        assert!(n > 0, "the child's tokens ended after {got} bytes");
        got += n as usize;
    }
    unsafe { libc::close(read_end) };
    let mut status = 0;
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child failed: {status}"
    );

    let mine: HashSet<&[u8; TOKEN]> = parents.iter().collect();
    assert_eq!(mine.len(), N, "the parent repeated a token");
    let children: Vec<&[u8]> = theirs.chunks_exact(TOKEN).collect();
    let distinct: HashSet<&[u8]> = children.iter().copied().collect();
    assert_eq!(distinct.len(), N, "the child repeated a token");
    let shared = children
        .iter()
        .filter(|t| mine.contains(<&[u8; TOKEN]>::try_from(**t).expect("32 bytes")))
        .count();
    assert_eq!(
        shared, 0,
        "{shared} of the child's {N} tokens are the parent's"
    );
}
