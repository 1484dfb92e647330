//! Where a partition's disk goes, field by field: Tantivy's own space
//! accounting (term dictionary, postings, positions, fast columns, doc
//! store) of every segment, summed, in bytes an event.
//!
//!     cargo run --release --example index_space -- data/index/2023-11-14

use std::collections::BTreeMap;

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: index_space <partition dir>"))?;
    let index = tantivy::Index::open_in_dir(&path)?;
    if std::env::var_os("MERGE").is_some() {
        // Merge every segment into one first (as compaction does), to
        // compare like with like.
        auditd::schema::register_tokenizers(&index);
        let mut writer: tantivy::IndexWriter = index.writer_with_num_threads(1, 50_000_000)?;
        let ids = index.searchable_segment_ids()?;
        writer.merge(&ids).wait()?;
        writer.wait_merging_threads()?;
    }
    let searcher = index.reader()?.searcher();
    let docs = searcher.num_docs().max(1) as f64;
    if std::env::var_os("SEGMENTS").is_some() {
        // Each segment's size and time range (µs), oldest first: what
        // lets a newest-first search skip it.
        let mut shapes = Vec::new();
        for segment in searcher.segment_readers() {
            let time = segment.fast_fields().i64("time")?;
            shapes.push((time.min_value(), time.max_value(), segment.num_docs()));
        }
        shapes.sort_unstable();
        for (min, max, docs) in shapes {
            println!("segment: {docs:>9} events, time {min} ..= {max}");
        }
    }
    let usage = serde_json::to_value(searcher.space_usage()?)?;
    let mut sizes: BTreeMap<(String, String), u64> = BTreeMap::new();
    for segment in usage["segments"].as_array().into_iter().flatten() {
        for component in ["termdict", "postings", "positions", "fast_fields"] {
            let fields = &segment["components"][component]["PerField"]["fields"];
            for (field, used) in fields.as_object().into_iter().flatten() {
                let bytes = used["num_bytes"].as_u64().unwrap_or(0);
                *sizes
                    .entry((component.to_owned(), field.clone()))
                    .or_default() += bytes;
            }
        }
        let store = &segment["components"]["store"]["Store"];
        *sizes.entry(("store".into(), "body".into())).or_default() +=
            store["data"].as_u64().unwrap_or(0) + store["offsets"].as_u64().unwrap_or(0);
    }
    println!(
        "{} segments, {} events",
        usage["segments"].as_array().map_or(0, Vec::len),
        docs
    );
    for ((component, field), bytes) in sizes {
        println!(
            "{component:12} {field:16} {:>8.2} B/event",
            bytes as f64 / docs
        );
    }
    Ok(())
}
