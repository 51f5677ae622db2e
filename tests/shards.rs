//! Token shards: a data file tokenised once gives the blocks the in-memory path gives, bit for
//! bit; a second request reuses it, a changed file or setting makes a new one, a damaged one
//! is found by its hash and built again, concurrent builders wait for one build, and a big
//! file is tokenised with bounded memory.

use std::path::{Path, PathBuf};

use lors::data::shards::{open_or_build, Origin, Shard, ShardRequest};
use lors::data::{load_blocks, BlockOptions, Blocks, HoldOut, TextTokenizer};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tokenizer() -> TextTokenizer {
    TextTokenizer::from_file(&repo().join("assets/demo-model/tokenizer.json"), Some(2)).unwrap()
}

fn options(seq_len: usize) -> BlockOptions {
    BlockOptions {
        seq_len,
        ..BlockOptions::evaluation(seq_len)
    }
}

/// The tests of this file one at a time: one of them measures the heap's peak.
fn alone() -> std::sync::MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn shard(data: &Path, dir: &Path, opts: BlockOptions, hold_out: Option<HoldOut>) -> Shard {
    let tok = tokenizer();
    open_or_build(&ShardRequest {
        data,
        tokenizer: &tok,
        opts,
        hold_out,
        shard_dir: dir,
    })
    .unwrap()
}

fn same_blocks(a: &Blocks, b: &Blocks) {
    assert_eq!((a.len(), a.seq_len()), (b.len(), b.seq_len()));
    for i in 0..a.len() {
        assert_eq!(a.ids(i), b.ids(i), "block {i}");
        assert_eq!(a.loss(i), b.loss(i), "block {i}");
    }
}

/// A copy of the demo's training data to change.
fn demo_data(dir: &Path) -> PathBuf {
    let path = dir.join("train.jsonl");
    std::fs::copy(repo().join("assets/demo-data/train.jsonl"), &path).unwrap();
    path
}

#[test]
fn a_shard_holds_the_in_memory_blocks_and_is_reused_until_its_file_changes() {
    let _alone = alone();
    let tmp = tempfile::tempdir().unwrap();
    let (data, dir) = (demo_data(tmp.path()), tmp.path().join("shards"));
    let opts = options(64);
    let first = shard(&data, &dir, opts, None);
    assert!(
        matches!(first.origin, Origin::Built { .. }),
        "{:?}",
        first.origin
    );
    let memory = load_blocks(&data, &tokenizer(), &opts).unwrap();
    same_blocks(&first.train, &memory.blocks);
    assert_eq!(first.records, 400);
    let again = shard(&data, &dir, opts, None);
    assert!(
        matches!(again.origin, Origin::Reused { .. }),
        "{:?}",
        again.origin
    );
    assert_eq!(again.dir, first.dir);
    same_blocks(&again.train, &memory.blocks);
    // Another seq_len, or a changed file, is another shard; the first stays as it was.
    let longer = shard(&data, &dir, options(100), None);
    assert!(matches!(longer.origin, Origin::Built { .. }));
    assert_ne!(longer.dir, first.dir);
    let mut text = std::fs::read_to_string(&data).unwrap();
    text.push_str("{\"text\": \"One more story about a cat who sat.\"}\n");
    std::fs::write(&data, text).unwrap();
    let changed = shard(&data, &dir, opts, None);
    assert!(
        matches!(changed.origin, Origin::Built { .. }),
        "a changed file was reused"
    );
    assert_eq!(changed.records, 401);
    assert_ne!(changed.dir, first.dir);
    same_blocks(
        &changed.train,
        &load_blocks(&data, &tokenizer(), &opts).unwrap().blocks,
    );
}

#[test]
fn a_held_out_split_keeps_the_records_it_always_held_out() {
    let _alone = alone();
    let tmp = tempfile::tempdir().unwrap();
    let (data, dir) = (demo_data(tmp.path()), tmp.path().join("shards"));
    let hold = HoldOut {
        fraction: 0.1,
        seed: 7,
    };
    let split = shard(&data, &dir, options(64), Some(hold));
    // The same split by hand: the records each side, in file order, packed.
    let records = lors::data::read_records(&data, Default::default(), false)
        .unwrap()
        .records;
    let held = lors::data::held_out(records.len(), hold);
    assert_eq!(held.iter().filter(|&&h| h).count(), 40);
    let side = |valid: bool| {
        let path = tmp.path().join(format!("side-{valid}.jsonl"));
        let lines: Vec<String> = records
            .iter()
            .zip(&held)
            .filter(|(_, &h)| h == valid)
            .map(|(r, _)| match r {
                lors::data::Record::Text(t) => serde_json::json!({ "text": t }).to_string(),
                other => panic!("{other:?}"),
            })
            .collect();
        std::fs::write(&path, lines.join("\n")).unwrap();
        load_blocks(&path, &tokenizer(), &options(64))
            .unwrap()
            .blocks
    };
    same_blocks(&split.train, &side(false));
    same_blocks(split.valid.as_ref().unwrap(), &side(true));
    // Another seed holds out other records: another shard.
    let other = shard(&data, &dir, options(64), Some(HoldOut { seed: 8, ..hold }));
    assert_ne!(other.dir, split.dir);
}

#[test]
fn a_damaged_shard_is_found_by_its_hash_and_built_again() {
    let _alone = alone();
    let tmp = tempfile::tempdir().unwrap();
    let (data, dir) = (demo_data(tmp.path()), tmp.path().join("shards"));
    let opts = options(64);
    let good = shard(&data, &dir, opts, None);
    let reference = load_blocks(&data, &tokenizer(), &opts).unwrap().blocks;
    let ids = good.dir.join("train.ids");
    drop(good);
    // One flipped byte (the length unchanged), then a truncated file, then a lost file.
    let damages: [(&str, &dyn Fn()); 3] = [
        ("SHA-256", &|| {
            let mut bytes = std::fs::read(&ids).unwrap();
            bytes[100] ^= 0x40;
            std::fs::write(&ids, bytes).unwrap();
        }),
        ("SHA-256", &|| {
            let bytes = std::fs::read(&ids).unwrap();
            std::fs::write(&ids, &bytes[..bytes.len() / 2]).unwrap();
        }),
        ("train.ids", &|| std::fs::remove_file(&ids).unwrap()),
    ];
    for (why, damage) in damages {
        damage();
        let rebuilt = shard(&data, &dir, opts, None);
        match &rebuilt.origin {
            Origin::Rebuilt { damage, .. } => assert!(damage.contains(why), "{damage}"),
            other => panic!("a damaged shard was used: {other:?}"),
        }
        same_blocks(&rebuilt.train, &reference);
    }
}

#[test]
fn concurrent_requests_wait_for_one_build() {
    let _alone = alone();
    let tmp = tempfile::tempdir().unwrap();
    let (data, dir) = (demo_data(tmp.path()), tmp.path().join("shards"));
    let origins: Vec<Origin> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| shard(&data, &dir, options(64), None).origin))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let built = origins
        .iter()
        .filter(|o| matches!(o, Origin::Built { .. }))
        .count();
    assert_eq!(built, 1, "{origins:?}");
    let entries: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(
        entries.len(),
        2,
        "the shard and its lock file, no temporary left"
    );
}

/// A 32 MB file (32 million tokens with the demo's byte-level tokenizer, 160 MB as the
/// in-memory blocks hold them) is tokenised into a shard with the heap growing by less than a
/// tenth of that; the shard's blocks are the in-memory ones.
#[test]
fn a_big_file_is_tokenised_with_bounded_memory() {
    let _alone = alone();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("big.jsonl");
    let line = "{\"text\": \"Once upon a time, Mia had a funny bird. One day, Mia and the bird \
                ran in the park. They were very happy and played until the sun went down.\"}\n";
    let copies = (32 << 20) / line.len();
    std::fs::write(&data, line.repeat(copies)).unwrap();
    let before = lors::memory::live_bytes();
    lors::memory::reset_peak();
    let big = shard(&data, &tmp.path().join("shards"), options(256), None);
    let grew = lors::memory::peak_bytes() - before;
    let tokens = big.tokens;
    assert!(tokens > 30_000_000, "{tokens} tokens");
    let in_memory = tokens * 5;
    assert!(
        grew < in_memory / 10,
        "the heap grew by {grew} bytes building a shard of {tokens} tokens"
    );
    assert_eq!(big.train.len(), tokens / 256);
}

#[test]
fn stale_shards_are_those_of_changed_or_gone_files_and_unfinished_builds() {
    let _alone = alone();
    let tmp = tempfile::tempdir().unwrap();
    let (data, dir) = (demo_data(tmp.path()), tmp.path().join("shards"));
    let old = shard(&data, &dir, options(64), None).dir;
    assert_eq!(lors::data::shards::stale_shards(&dir).unwrap(), []);
    std::fs::write(
        &data,
        "{\"text\": \"A new story about a dog who ran and ran.\"}\n".repeat(40),
    )
    .unwrap();
    let new = shard(&data, &dir, options(64), None).dir;
    // A build whose process is gone left its temporary folder.
    let unfinished = dir.join(format!("{}.tmp-{}", "0".repeat(24), u32::MAX));
    std::fs::create_dir(&unfinished).unwrap();
    let stale = lors::data::shards::stale_shards(&dir).unwrap();
    let mut found: Vec<(PathBuf, String)> = stale
        .iter()
        .map(|s| (s.dir.clone(), s.why.clone()))
        .collect();
    let mut expected = vec![
        (
            unfinished.clone(),
            "a build that did not finish".to_string(),
        ),
        (old.clone(), format!("{} has changed since", data.display())),
    ];
    found.sort();
    expected.sort();
    assert_eq!(found, expected);
    assert!(stale.iter().all(|s| s.bytes > 0 || s.dir == unfinished));
    for s in &stale {
        lors::data::shards::remove(s).unwrap();
    }
    assert!(!old.exists() && !unfinished.exists() && new.exists());
    std::fs::remove_file(&data).unwrap();
    let gone = lors::data::shards::stale_shards(&dir).unwrap();
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].dir, new);
    assert!(gone[0].why.ends_with("is gone"), "{}", gone[0].why);
}
