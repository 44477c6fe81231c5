//! The shortest useful program: take a lock, work, extend, release.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example quickstart
//! ```

use std::time::Duration;

use redlease::{LockManager, RetryPolicy};

fn main() -> Result<(), redlease::Error> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let locks = LockManager::builder().node(url.as_str()).build()?;

    // One attempt: `None` means someone else holds it right now.
    match locks.try_lock("quickstart:report", Duration::from_secs(10))? {
        Some(lock) => {
            println!("got the lock, valid for {:?}", lock.remaining());
            let still_ours = lock.release()?;
            println!("released (still ours: {still_ours})");
        }
        None => println!("someone else holds quickstart:report"),
    }

    // Wait for it, up to 2 s, retrying every ~50 ms.
    let policy = RetryPolicy::fixed(Duration::from_millis(50)).max_wait(Duration::from_secs(2));
    let mut lock = locks.lock_with("quickstart:report", Duration::from_secs(10), &policy)?;
    // ... long work: renew before the lock runs out.
    lock.extend(Duration::from_secs(10))?;
    println!("extended, valid for {:?}", lock.remaining());
    drop(lock); // released here, best effort
    Ok(())
}
