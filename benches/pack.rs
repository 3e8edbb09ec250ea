//! Packing throughput, in bytes of input per second, on a binary-like input: this machine's
//! own executables and libraries concatenated (64 MiB by default; QUINISTRY_BENCH_MIB to
//! change). Run: `cargo bench --bench pack`.
//!
//! The `pack` group compares compressions on the same input: single-stream gzip (one deflate
//! stream, one core), parallel gzip on 1, 2 and 4 threads (1 MiB blocks; the same bytes for
//! each), zstd and no compression. Levels are each tool's default (gzip 6, zstd 3); gzip 1 is
//! there too.
//!
//! Every iteration runs the whole pipeline (read, tar, hash, compress, hash, write, fsync)
//! into a temp store. Iterations after the first find their layer already stored and take the dedupe
//! path at commit (no fsync), which is what a repeated pack costs in real use too.

use std::hint::black_box;
use std::io::Read;
use std::path::{Path, PathBuf};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use quinistry::digest::HashingWriter;
use quinistry::pack::compress::{Compression, DEFAULT_BLOCK_SIZE};
use quinistry::pack::{Input, LayerOptions, Packing, pack_layer_with};
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
    let gzip = |level, block_size| Compression::Gzip { level, block_size };
    let runs = [
        ("gzip-6-single-stream", gzip(6, 0), 1),
        ("gzip-6-parallel-1-thread", gzip(6, DEFAULT_BLOCK_SIZE), 1),
        ("gzip-6-parallel-2-threads", gzip(6, DEFAULT_BLOCK_SIZE), 2),
        ("gzip-6-parallel-4-threads", gzip(6, DEFAULT_BLOCK_SIZE), 4),
        ("gzip-1-single-stream", gzip(1, 0), 1),
        ("gzip-1-parallel-2-threads", gzip(1, DEFAULT_BLOCK_SIZE), 2),
        ("zstd-3", Compression::Zstd { level: 3 }, 1),
        ("none", Compression::None, 1),
    ];
    for (name, compression, threads) in runs {
        let opts = LayerOptions {
            compression,
            mtime: 0,
        };
        let packing = Packing {
            threads,
            ..Packing::default()
        };
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                black_box(
                    pack_layer_with(&store, &inputs, opts, &packing)
                        .await
                        .expect("pack"),
                )
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
