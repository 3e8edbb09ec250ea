//! Packing throughput, in bytes of input per second, on a binary-like input: this machine's
//! own executables and libraries concatenated (64 MiB by default; QUINISTRY_BENCH_MIB to
//! change). Run: `cargo bench --bench pack`.
//!
//! Every iteration runs the whole pipeline (read, tar, hash, gzip, hash, write, fsync) into a
//! temp store. Iterations after the first find their layer already stored and take the dedupe
//! path at commit (no fsync), which is what a repeated pack costs in real use too.

use std::hint::black_box;
use std::io::Read;
use std::path::{Path, PathBuf};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use quinistry::digest::HashingWriter;
use quinistry::pack::{Input, LayerOptions, pack_layer};
use quinistry::store::Store;
use tokio::io::AsyncWriteExt;

fn input_mib() -> usize {
    std::env::var("QUINISTRY_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

/// Executables and libraries under /usr (sorted), concatenated to `len` bytes.
fn binary_like(len: usize) -> Vec<u8> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<_> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => walk(&p, out),
                Ok(m) if m.is_file() && m.len() > 64 << 10 => out.push(p),
                _ => {}
            }
        }
    }
    let mut files = Vec::new();
    for d in ["/usr/bin", "/usr/lib"] {
        walk(Path::new(d), &mut files);
    }
    assert!(
        !files.is_empty(),
        "no files under /usr to build the input from"
    );
    let mut data = Vec::with_capacity(len);
    'fill: loop {
        for f in &files {
            if let Ok(mut file) = std::fs::File::open(f) {
                let _ = file.read_to_end(&mut data);
            }
            if data.len() >= len {
                break 'fill;
            }
        }
    }
    data.truncate(len);
    data
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let len = input_mib() << 20;
    let data = binary_like(len);
    let dir = tempfile::tempdir().expect("tempdir");
    let input_path = dir.path().join("input.bin");
    std::fs::write(&input_path, &data).expect("write input");
    let store = rt
        .block_on(Store::open(dir.path().join("store")))
        .expect("store");
    let inputs = [Input::at(&input_path, "/main", "bench").expect("input")];

    let mut group = c.benchmark_group("pack");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(len as u64));
    for level in [1, 6] {
        group.bench_function(format!("gzip-level-{level}"), |b| {
            b.to_async(&rt).iter(|| async {
                let opts = LayerOptions { level, mtime: 0 };
                black_box(pack_layer(&store, &inputs, opts).await.expect("pack"))
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("hash");
    group.throughput(Throughput::Bytes(len as u64));
    group.bench_function("hashing-writer-sha256", |b| {
        b.to_async(&rt).iter(|| async {
            let mut w = HashingWriter::new(tokio::io::sink());
            for chunk in data.chunks(1 << 20) {
                w.write_all(chunk).await.expect("write");
            }
            black_box(w.into_parts().1)
        })
    });
    group.finish();
}

criterion_group!(pack, benches);
criterion_main!(pack);
