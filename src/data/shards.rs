//! Token shards: a data file tokenised once into blocks on disk, which every run, sweep trial
//! and rank that asks for the same blocks memory-maps instead of tokenising again. Memory for
//! the data stays what the pages in use take, whatever the file's size.
//!
//! A shard is the folder `<shard_dir>/<key>/`, where the key is a hash of everything that
//! determines the blocks ([`ShardKey`]: the tokenizer file's and the data file's SHA-256, the
//! EOS id, the format, `seq_len`, packing, the prompt rule, skipping, the held-out split):
//!
//! ```text
//! manifest.json   the key, where the data came from, and each part's blocks and hashes
//! train.ids       the kept records' blocks (all records without a split), see [`Blocks`]
//! train.loss
//! valid.ids       the held-out records' blocks, with a split that holds some out
//! valid.loss
//! ```
//!
//! A shard is built in a temporary folder and renamed into place, under a lock that makes
//! concurrent runs wait for one build. Opening one checks every file's length and SHA-256;
//! a damaged shard is removed and built again, never used. A changed data file or tokenizer
//! makes a new key, so a stale shard is never found.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::blocks::{Blocks, IdWidth};
use super::stream::{no_block, tokenize_file, HoldOut, PartOutput};
use super::{BlockOptions, DataFormat, TextTokenizer};
use crate::error::{LorsError, Result};

/// Bumped when the stored layout or the tokenising rules change.
const LAYOUT_VERSION: u32 = 1;
const MANIFEST: &str = "manifest.json";

/// Everything that determines a file's blocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardKey {
    pub layout: u32,
    pub tokenizer_sha256: String,
    pub eos_id: Option<u32>,
    pub data_sha256: String,
    pub format: DataFormat,
    pub seq_len: usize,
    pub pack: Option<bool>,
    pub train_on_prompt: bool,
    pub skip_bad: bool,
    /// The held-out share and its seed, when the file is split.
    pub hold_out: Option<(f64, u64)>,
}

impl ShardKey {
    /// The shard's folder name: the first 24 hex digits of the key's SHA-256.
    fn name(&self) -> String {
        let json = serde_json::to_vec(self).expect("keys serialize");
        hex(&Sha256::digest(json))[..24].to_string()
    }
}

/// One part's blocks as the manifest records them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PartInfo {
    blocks: usize,
    /// Tokens of the records (before cutting into blocks).
    tokens: usize,
    ids_sha256: String,
    loss_sha256: String,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Manifest {
    key: ShardKey,
    /// The data file it was built from (for people; the key's hash identifies it).
    data: PathBuf,
    width: IdWidth,
    records: usize,
    skipped: usize,
    train: PartInfo,
    valid: Option<PartInfo>,
    /// Seconds the build took.
    build_seconds: f64,
}

/// What a run asks for: a data file's blocks as `opts` and `hold_out` make them.
pub struct ShardRequest<'a> {
    pub data: &'a Path,
    pub tokenizer: &'a TextTokenizer,
    pub opts: BlockOptions,
    pub hold_out: Option<HoldOut>,
    /// Where shards are kept.
    pub shard_dir: &'a Path,
}

/// An opened shard.
pub struct Shard {
    pub dir: PathBuf,
    pub train: Blocks,
    /// The held-out blocks (none without a split, or when it holds nothing out).
    pub valid: Option<Blocks>,
    pub records: usize,
    pub skipped: usize,
    pub tokens: usize,
    /// How it was had: built now (and why), or reused.
    pub origin: Origin,
}

/// Whether a shard was built by this call or reused.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    Built {
        seconds: f64,
    },
    /// Built again: the one there was damaged (what was wrong).
    Rebuilt {
        seconds: f64,
        damage: String,
    },
    /// Reused: tokenising it took `build_seconds` when it was built.
    Reused {
        build_seconds: f64,
    },
}

/// The default place for shards: `~/.cache/lors/shards`.
pub fn default_shard_dir() -> PathBuf {
    crate::io::cache_dir().join("shards")
}

/// The request's shard: opened when a sound one is there, else built (waiting for another
/// process building the same one).
pub fn open_or_build(req: &ShardRequest) -> Result<Shard> {
    let data = crate::sources::resolve_data_path(req.data)?;
    let key = key_of(req, &data)?;
    std::fs::create_dir_all(req.shard_dir).map_err(|e| LorsError::io(req.shard_dir, e))?;
    let dir = req.shard_dir.join(key.name());
    let _lock = crate::io::wait_for_lock(&req.shard_dir.join(format!("{}.lock", key.name())))?;
    let damage = match open(&dir, &key) {
        Ok(shard) => return Ok(shard),
        Err(e) if dir.exists() => {
            std::fs::remove_dir_all(&dir).map_err(|e| LorsError::io(&dir, e))?;
            Some(e.to_string())
        }
        Err(_) => None,
    };
    let seconds = build(req, &data, &key, &dir)?;
    let mut shard = open(&dir, &key)?;
    shard.origin = match damage {
        Some(damage) => Origin::Rebuilt { seconds, damage },
        None => Origin::Built { seconds },
    };
    Ok(shard)
}

fn key_of(req: &ShardRequest, data: &Path) -> Result<ShardKey> {
    Ok(ShardKey {
        layout: LAYOUT_VERSION,
        tokenizer_sha256: file_sha256(req.tokenizer.path())?,
        eos_id: req.tokenizer.eos_id,
        data_sha256: file_sha256(data)?,
        format: req.opts.format,
        seq_len: req.opts.seq_len,
        pack: req.opts.pack,
        train_on_prompt: req.opts.train_on_prompt,
        skip_bad: req.opts.skip_bad,
        hold_out: req.hold_out.map(|h| (h.fraction, h.seed)),
    })
}

/// Open the shard in `dir`, checking its key and every file's length and hash.
fn open(dir: &Path, key: &ShardKey) -> Result<Shard> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|e| LorsError::io(&path, e))?;
    let m: Manifest =
        serde_json::from_str(&text).map_err(|e| LorsError::parse(&path, e.to_string()))?;
    if &m.key != key {
        return Err(LorsError::parse(&path, "made for other data or settings"));
    }
    let part = |name: &str, info: &PartInfo| -> Result<Blocks> {
        let (ids, loss) = (
            dir.join(format!("{name}.ids")),
            dir.join(format!("{name}.loss")),
        );
        for (file, want) in [(&ids, &info.ids_sha256), (&loss, &info.loss_sha256)] {
            if &file_sha256(file)? != want {
                return Err(LorsError::parse(
                    file,
                    "damaged: its SHA-256 is not the manifest's",
                ));
            }
        }
        Blocks::mapped(&ids, &loss, m.width, key.seq_len, info.blocks)
    };
    Ok(Shard {
        dir: dir.to_path_buf(),
        train: part("train", &m.train)?,
        valid: m.valid.as_ref().map(|v| part("valid", v)).transpose()?,
        records: m.records,
        skipped: m.skipped,
        tokens: m.train.tokens + m.valid.as_ref().map_or(0, |v| v.tokens),
        origin: Origin::Reused {
            build_seconds: m.build_seconds,
        },
    })
}

/// A file being written with its SHA-256 taken on the way.
struct Hashed {
    file: std::io::BufWriter<std::fs::File>,
    hash: Sha256,
    path: PathBuf,
}

impl Write for Hashed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Hashed {
    /// Flush and sync the file; its hash.
    fn close(self) -> Result<String> {
        let file = self
            .file
            .into_inner()
            .map_err(|e| LorsError::io(&self.path, e.into_error()))?;
        file.sync_all().map_err(|e| LorsError::io(&self.path, e))?;
        Ok(hex(&self.hash.finalize()))
    }
}

/// Tokenise the data into a temporary folder beside `dir` (removed if that fails) and
/// rename it into place; the seconds it took.
fn build(req: &ShardRequest, data: &Path, key: &ShardKey, dir: &Path) -> Result<f64> {
    let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| LorsError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| LorsError::io(&tmp, e))?;
    let built = build_in(req, data, key, &tmp);
    if built.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    let seconds = built?;
    std::fs::rename(&tmp, dir).map_err(|e| LorsError::io(dir, e))?;
    Ok(seconds)
}

/// Write the shard's files and manifest into `tmp`; the seconds it took.
fn build_in(req: &ShardRequest, data: &Path, key: &ShardKey, tmp: &Path) -> Result<f64> {
    let started = Instant::now();
    let mut names = ["train", "valid"].into_iter();
    let mut writers = || -> Result<(Hashed, Hashed)> {
        let name = names.next().expect("two parts at most");
        let open = |ext: &str| -> Result<Hashed> {
            let path = tmp.join(format!("{name}.{ext}"));
            let file = std::fs::File::create(&path).map_err(|e| LorsError::io(&path, e))?;
            Ok(Hashed {
                file: std::io::BufWriter::with_capacity(1 << 20, file),
                hash: Sha256::new(),
                path,
            })
        };
        Ok((open("ids")?, open("loss")?))
    };
    let out = tokenize_file(data, req.tokenizer, &req.opts, req.hold_out, &mut writers)?;
    if out.train.blocks == 0 {
        return Err(no_block(data, req.opts.seq_len));
    }
    let close = |p: PartOutput<Hashed>| -> Result<PartInfo> {
        Ok(PartInfo {
            blocks: p.blocks,
            tokens: p.tokens,
            ids_sha256: p.ids.close()?,
            loss_sha256: p.loss.close()?,
        })
    };
    let build_seconds = started.elapsed().as_secs_f64();
    let manifest = Manifest {
        key: key.clone(),
        data: data.to_path_buf(),
        width: IdWidth::for_vocab(req.tokenizer.vocab_size()),
        records: out.records,
        skipped: out.skipped,
        train: close(out.train)?,
        // Held-out records too few for one block make no validation part.
        valid: out.valid.filter(|v| v.blocks > 0).map(close).transpose()?,
        build_seconds,
    };
    let text = serde_json::to_string_pretty(&manifest).expect("manifests serialize");
    crate::io::write_atomic(&tmp.join(MANIFEST), text.as_bytes())?;
    Ok(build_seconds)
}

/// A shard no run can ask for any more: its data file is gone or has changed since (a run
/// on the new contents has a shard of its own), or a build that died left it half written.
#[derive(Debug, Clone, PartialEq)]
pub struct StaleShard {
    pub dir: PathBuf,
    pub bytes: u64,
    pub why: String,
}

/// The stale shards in `shard_dir` (none when it does not exist).
pub fn stale_shards(shard_dir: &Path) -> Result<Vec<StaleShard>> {
    let Ok(entries) = std::fs::read_dir(shard_dir) else {
        return Ok(Vec::new());
    };
    let mut stale = Vec::new();
    for entry in entries {
        let dir = entry.map_err(|e| LorsError::io(shard_dir, e))?.path();
        if !dir.is_dir() {
            continue;
        }
        if let Some(why) = staleness(&dir) {
            let bytes = folder_bytes(&dir);
            stale.push(StaleShard { dir, bytes, why });
        }
    }
    stale.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(stale)
}

/// Why the shard in `dir` is stale, if it is.
fn staleness(dir: &Path) -> Option<String> {
    let name = dir.file_name()?.to_string_lossy().into_owned();
    if let Some((_, pid)) = name.split_once(".tmp-") {
        let alive = pid.parse().is_ok_and(crate::io::process_alive);
        return (!alive).then(|| "a build that did not finish".to_string());
    }
    let manifest = std::fs::read_to_string(dir.join(MANIFEST)).ok()?;
    let m: Manifest = serde_json::from_str(&manifest).ok()?;
    match file_sha256(&m.data) {
        Err(_) => Some(format!("{} is gone", m.data.display())),
        Ok(hash) if hash != m.key.data_sha256 => {
            Some(format!("{} has changed since", m.data.display()))
        }
        Ok(_) => None,
    }
}

fn folder_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Remove a stale shard (its empty lock file stays: another process may hold it).
pub fn remove(shard: &StaleShard) -> Result<()> {
    std::fs::remove_dir_all(&shard.dir).map_err(|e| LorsError::io(&shard.dir, e))
}

/// The SHA-256 of a file, read in 1 MiB pieces.
fn file_sha256(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| LorsError::io(path, e))?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| LorsError::io(path, e))?;
        if n == 0 {
            return Ok(hex(&hash.finalize()));
        }
        hash.update(&buf[..n]);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
