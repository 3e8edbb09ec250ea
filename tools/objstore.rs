//! object_store's own put and get of one file to an S3 endpoint, timed: the baseline that
//! `benches/shared.sh` holds a replica's push and pull of the same bytes against.
//!
//! `cargo run --release --example objstore -- ENDPOINT BUCKET KEY FILE` (credentials and
//! region from `AWS_*`). The put is object_store's `BufWriter` with its defaults (10 MiB
//! parts, 8 in flight), the get one streamed `get`; the object is deleted after. Prints
//! `put SECONDS` and `get SECONDS`.

use std::error::Error;
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::io::AsyncWriteExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [endpoint, bucket, key, file] = args.as_slice() else {
        return Err("usage: objstore ENDPOINT BUCKET KEY FILE".into());
    };
    // The provider the server uses (reqwest is built without one of its own).
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let store: Arc<dyn ObjectStore> = Arc::new(
        AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"))
            .with_virtual_hosted_style_request(false)
            .build()?,
    );
    let key = Path::from(key.as_str());

    let t = Instant::now();
    let mut writer = BufWriter::new(store.clone(), key.clone());
    let mut input = tokio::fs::File::open(file).await?;
    let size = tokio::io::copy(&mut input, &mut writer).await?;
    writer.shutdown().await?;
    println!("put {:.3}", t.elapsed().as_secs_f64());

    let t = Instant::now();
    let mut body = store.get(&key).await?.into_stream();
    let mut got = 0u64;
    while let Some(bytes) = body.next().await {
        got += bytes?.len() as u64;
    }
    println!("get {:.3}", t.elapsed().as_secs_f64());
    store.delete(&key).await?;
    if got != size {
        return Err(format!("got {got} bytes back of {size}").into());
    }
    Ok(())
}
