#![allow(clippy::tests_outside_test_module)]
// The counting allocator below; the library itself forbids unsafe code.
#![allow(unsafe_code)]
//! Many connections at once: concurrency, cleanup, and memory per connection.
//! The tests here run one at a time (they measure the process's memory).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{B_IP, Pattern, addr, echo_server, pair};
use tokio::io::AsyncWriteExt;
use tokio::time::timeout;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The system allocator, counting the bytes live on the heap.
struct Counting;

static HEAP: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees hold; the counter has no effect on them.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HEAP.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller upholds `alloc`'s contract, which `System` shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        HEAP.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HEAP.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from this allocator, that is from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HEAP.fetch_add(new_size, Ordering::Relaxed);
        HEAP.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `System` with `layout`; the caller upholds the rest.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_connections() {
    const CONNECTIONS: u64 = 500;
    const BYTES: usize = 64 * 1024;
    let _serial = SERIAL.lock().await;
    let (a, b) = pair().await;
    echo_server(b.listen(7).await.unwrap());
    // Handshake first: until then boringtun queues at most 256 packets, and
    // a dropped SYN costs smoltcp's one-second initial RTO.
    drop(a.connect(addr(B_IP, 7)).await.unwrap());

    let started = Instant::now();
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            let a = a.clone();
            tokio::spawn(async move {
                let stream = a.connect(addr(B_IP, 7)).await.unwrap();
                let (mut r, mut w) = tokio::io::split(stream);
                // Each connection its own content, so crossed streams show.
                let pattern = Pattern::new(i);
                let send = async {
                    pattern.write(&mut w, BYTES).await.unwrap();
                    w.shutdown().await.unwrap();
                };
                let t = Instant::now();
                let (_, echoed) = tokio::join!(send, pattern.read_exact_to_eof(&mut r, BYTES));
                echoed.unwrap();
                t.elapsed()
            })
        })
        .collect();
    timeout(Duration::from_secs(120), async {
        let mut times = Vec::new();
        for client in clients {
            times.push(client.await.unwrap());
        }
        times.sort();
        println!(
            "per connection: median {:?}, p90 {:?}, max {:?}",
            times[times.len() / 2],
            times[times.len() * 9 / 10],
            times[times.len() - 1]
        );
    })
    .await
    .expect("all connections complete");
    println!(
        "{CONNECTIONS} connections echoing {} KiB each in {:.2} s",
        BYTES / 1024,
        started.elapsed().as_secs_f64()
    );

    timeout(Duration::from_secs(20), async {
        while a.connection_count() + b.connection_count() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every connection is freed");
}

/// Resident memory of this process, from /proc.
fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_connections() {
    const CONNECTIONS: usize = 2000;
    let _serial = SERIAL.lock().await;
    let (a, b) = pair().await;
    let listener = b.listen(7).await.unwrap();
    // Warm up allocator pools and the tunnel before measuring.
    drop(a.connect(addr(B_IP, 7)).await.unwrap());
    drop(listener.accept().await.unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_bytes();
    let heap_before = HEAP.load(Ordering::Relaxed);

    let accepting = tokio::spawn(async move {
        let mut streams = Vec::with_capacity(CONNECTIONS);
        while streams.len() < CONNECTIONS {
            streams.push(listener.accept().await.unwrap().0);
        }
        streams
    });
    let mut clients = Vec::with_capacity(CONNECTIONS);
    for chunk in 0..CONNECTIONS / 100 {
        let batch: Vec<_> = (0..100)
            .map(|_| {
                let a = a.clone();
                tokio::spawn(async move { a.connect(addr(B_IP, 7)).await.unwrap() })
            })
            .collect();
        for task in batch {
            clients.push(
                timeout(Duration::from_secs(30), task)
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        assert_eq!(clients.len(), (chunk + 1) * 100);
    }
    let mut servers = timeout(Duration::from_secs(30), accepting)
        .await
        .unwrap()
        .unwrap();
    // One byte each way on every connection: all of them work.
    for stream in clients.iter_mut().chain(servers.iter_mut()) {
        stream.write_all(b"x").await.unwrap();
    }
    for stream in clients.iter_mut().chain(servers.iter_mut()) {
        let mut byte = [0u8; 1];
        tokio::io::AsyncReadExt::read_exact(stream, &mut byte)
            .await
            .unwrap();
    }
    assert_eq!(a.connection_count(), CONNECTIONS);
    assert_eq!(b.connection_count(), CONNECTIONS);
    let after = rss_bytes();
    // Both ends live in this process: two sockets per connection. The
    // measurement includes the test's own tasks and streams, so it is an upper bound.
    let sockets = 2 * CONNECTIONS;
    let heap = HEAP.load(Ordering::Relaxed).saturating_sub(heap_before);
    println!(
        "{CONNECTIONS} idle connections, both ends here: heap {} B and RSS {} B per socket (its buffers: 2 × 16384 B)",
        heap / sockets,
        after.saturating_sub(before) / sockets,
    );
    assert!(
        heap / sockets < 40 * 1024,
        "{} B per socket",
        heap / sockets
    );

    drop(clients);
    drop(servers);
    timeout(Duration::from_secs(20), async {
        while a.connection_count() + b.connection_count() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every connection is freed");
}
