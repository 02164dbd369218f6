//! Digest throughput: our `digest_dir` over a 200 MB addon against the bare primitive
//! (`sha256sum` of the same bytes, and the sha2 crate on one in-memory buffer) in the same run.
//!
//! `cargo bench -p addon-descriptors --bench digest` (set DIGEST_BENCH_MB to change the size).

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::Digest as _;

fn best_of<F: FnMut()>(n: usize, mut f: F) -> Duration {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn main() {
    let mb: usize = std::env::var("DIGEST_BENCH_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let dir = tempfile::tempdir().expect("tempdir");
    // A realistic shape: one large model file plus many small source files.
    let big = mb * 9 / 10;
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut chunk = vec![0u8; 1 << 20];
    let mut f = std::fs::File::create(dir.path().join("model.bin")).expect("create");
    for _ in 0..big {
        for b in chunk.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = state as u8;
        }
        f.write_all(&chunk).expect("write");
    }
    drop(f);
    std::fs::create_dir(dir.path().join("src")).expect("mkdir");
    let small = (mb - big) * 1024 / 64; // 64 KiB files
    for i in 0..small {
        std::fs::write(dir.path().join(format!("src/f{i:05}.scm")), &chunk[..64 * 1024]).expect("write");
    }
    let total_bytes: u64 = walk_size(dir.path());
    let mbytes = total_bytes as f64 / 1e6;

    let sha_ni = std::arch::is_x86_feature_detected!("sha");
    // Warm the page cache, then measure.
    addon_descriptors::digest_dir(dir.path()).expect("digest");
    let ours = best_of(5, || {
        addon_descriptors::digest_dir(dir.path()).expect("digest");
    });
    let files: Vec<_> = walkdir::WalkDir::new(dir.path())
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().to_path_buf())
        .collect();
    let bare = best_of(5, || {
        for batch in files.chunks(500) {
            let st = Command::new("sha256sum").args(batch).stdout(std::process::Stdio::null()).status();
            assert!(st.map(|s| s.success()).unwrap_or(false), "sha256sum failed");
        }
    });
    let buf: Vec<u8> = std::fs::read(dir.path().join("model.bin")).expect("read");
    let mem = best_of(5, || {
        std::hint::black_box(sha2::Sha256::digest(&buf));
    });
    let mem_rate = buf.len() as f64 / 1e6 / mem.as_secs_f64();
    let ours_rate = mbytes / ours.as_secs_f64();
    let bare_rate = mbytes / bare.as_secs_f64();
    println!("digest benchmark: {mbytes:.0} MB in {} files, CPU SHA extensions: {sha_ni}", files.len());
    println!("  addon digest_dir : {:>8.1} ms  {ours_rate:>7.0} MB/s", ours.as_secs_f64() * 1e3);
    println!("  bare sha256sum   : {:>8.1} ms  {bare_rate:>7.0} MB/s", bare.as_secs_f64() * 1e3);
    println!("  sha2 in memory   : {:>8.1} ms  {mem_rate:>7.0} MB/s (hashing alone, no I/O)", mem.as_secs_f64() * 1e3);
    println!("  ratio ours/sha256sum time: {:.2}x", ours.as_secs_f64() / bare.as_secs_f64());
}

fn walk_size(p: &std::path::Path) -> u64 {
    walkdir::WalkDir::new(p)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum()
}
